// The relay's book checksum, against vectors made by the Python implementation (relay.core).
import assert from "node:assert/strict";
import { test } from "node:test";

import { Book, bookChecksum, checksumText, crc32 } from "../../../relay/static/relay-client.js";
import { VECTORS } from "./helpers.mjs";

test("the worked example of docs/protocol.md", () => {
  const book = Book.fromPayload({
    bids: [["100.5", "1.25"], ["100.0", "3"], ["99.5", "0.010"]],
    asks: [["101.0", "2"], ["101.5", "0.5"]],
  });
  assert.equal(checksumText(book.bids(10), book.asks(10), 10), "100.5:1.25:101.0:2:100.0:3:101.5:0.5:99.5:0.010");
  assert.equal(bookChecksum(book), 1158620720);
  assert.equal(book.checksum(10), 1158620720);
});

test("CRC-32 is zlib's, unsigned", () => {
  assert.ok(VECTORS.crc32.length >= 5);
  for (const { text, crc32: expected } of VECTORS.crc32) assert.equal(crc32(text), expected, text);
  assert.equal(crc32("123456789"), 0xcbf43926); // the CRC-32/ISO-HDLC check value
  assert.ok(crc32("a") > 2 ** 31, "unsigned, not a negative int32");
});

test("checksum texts and values match the Python implementation", () => {
  assert.ok(VECTORS.checksums.length >= 15);
  for (const vector of VECTORS.checksums) {
    const book = Book.fromPayload({ bids: vector.bids, asks: vector.asks });
    const text = checksumText(book.bids(vector.depth), book.asks(vector.depth), vector.depth);
    assert.equal(text, vector.text, vector.name);
    assert.equal(bookChecksum(book, vector.depth), vector.checksum, vector.name);
  }
});

test("an empty book sums to zero", () => {
  assert.equal(bookChecksum(new Book()), 0);
});

test("strings, not values, are summed", () => {
  const a = Book.fromPayload({ bids: [["100.50", "1.25"]] });
  const b = Book.fromPayload({ bids: [["100.5", "1.25"]] });
  assert.notEqual(a.checksum(), b.checksum());
});

test("only the top levels count", () => {
  const book = Book.fromPayload({ bids: [["3", "1"], ["2", "1"], ["1", "1"]], asks: [["4", "1"]] });
  const deeper = book.copy();
  deeper.apply({ bids: [["0.5", "9"]] });
  assert.equal(deeper.checksum(3), book.checksum(3));
  assert.notEqual(deeper.checksum(4), book.checksum(4));
});
