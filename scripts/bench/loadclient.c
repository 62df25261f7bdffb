/*
 * Load client of the fanout bench, in C so that it is not the bottleneck: one epoll loop,
 * N WebSocket connections, no allocation per frame. run.py compiles it (cc -O2) on first
 * use and drives it exactly like loadclient.py: commands on stdin (start, stop, slow,
 * quit), one JSON object per line on stdout.
 *
 *   loadclient HOST PORT PATH MODE PLAN_FILE CONNECT_RATE LATENCY_FILE SLOW_RCVBUF
 *
 * MODE is "relay" (send {"op":"subscribe",...} per channel after the handshake; wait for
 * the snapshot or error of each) or "nchan" (channels are in the URL: PATH/<c1>,<c2>).
 * PLAN_FILE has one line per connection: "<slow 0|1> <channel>[,<channel>...]".
 *
 * Per update frame: the head is scanned for "channel", "seq" and "ts" (they come first in
 * every target's frames), gaps are counted per connection and channel, and latency =
 * receive time - ts (one clock read per recv(), which is when those frames arrived).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_SUBS 128
#define NAME_MAX_LEN 64
#define INIT_BUF 65536

enum { S_CONNECTING, S_HANDSHAKE, S_OPEN, S_CLOSED };

typedef struct {
    long long frames, updates, bytes, gaps, missing, dups, snapshots, errors;
    long long close_codes[8];  /* 1000,1001,1008,1009,1011,1013,4000,other */
    long long close_none;
    char gap_examples[5][160];
    int n_examples;
} stats_t;

typedef struct {
    int fd, state, slow, nsubs, pending, paused, got_close, close_code, expect_close;
    int chan[MAX_SUBS];       /* global channel index of each subscription */
    long long last[MAX_SUBS]; /* last seq per subscription, -1 = none yet */
    double started, ready_at;
    unsigned char *buf;
    size_t len, cap;
} conn_t;

static char (*names)[NAME_MAX_LEN];
static int n_names;
static conn_t *conns;
static int n_conns;
static stats_t st_main, st_slow;
static int measuring;
static int64_t *lat;
static size_t lat_len, lat_cap;
static int epfd;
static const char *host, *path, *mode;
static int port, nchan_mode;
static struct sockaddr_in addr;
static int slow_rcvbuf;

static double mono(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int64_t now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static double cpu_seconds(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

static int channel_index(const char *name, size_t n) {
    for (int i = 0; i < n_names; i++)
        if (strlen(names[i]) == n && memcmp(names[i], name, n) == 0) return i;
    return -1;
}

static int add_channel(const char *name) {
    int i = channel_index(name, strlen(name));
    if (i >= 0) return i;
    names = realloc(names, (size_t)(n_names + 1) * NAME_MAX_LEN);
    snprintf(names[n_names], NAME_MAX_LEN, "%s", name);
    return n_names++;
}

static void send_all(conn_t *c, const void *data, size_t n) {
    /* Small control writes only (handshake, subscribes, pongs): the socket buffer takes them. */
    const char *p = data;
    while (n > 0) {
        ssize_t w = send(c->fd, p, n, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR) continue;
            return;
        }
        p += w;
        n -= (size_t)w;
    }
}

/* A masked client frame (mask key 0: valid, and the payload needs no transformation). */
static void send_frame(conn_t *c, int opcode, const char *payload, size_t n) {
    unsigned char out[512];
    size_t h = 0;
    if (n > sizeof(out) - 8) return;
    out[h++] = (unsigned char)(0x80 | opcode);
    if (n < 126) {
        out[h++] = (unsigned char)(0x80 | n);
    } else {
        out[h++] = 0x80 | 126;
        out[h++] = (unsigned char)(n >> 8);
        out[h++] = (unsigned char)n;
    }
    memset(out + h, 0, 4);
    h += 4;
    memcpy(out + h, payload, n);
    send_all(c, out, h + n);
}

static void count_close(stats_t *s, conn_t *c) {
    if (c->expect_close) return;
    if (!c->got_close) {
        s->close_none++;
        return;
    }
    int codes[] = {1000, 1001, 1008, 1009, 1011, 1013, 4000};
    for (int i = 0; i < 7; i++)
        if (c->close_code == codes[i]) {
            s->close_codes[i]++;
            return;
        }
    s->close_codes[7]++;
}

static void mark_closed(conn_t *c) {
    if (c->state == S_CLOSED) return;
    count_close(c->slow ? &st_slow : &st_main, c);
    c->state = S_CLOSED;
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
}

static void mark_ready(conn_t *c) {
    if (c->ready_at > 0) return;
    c->ready_at = mono();
    if (c->slow) { /* stop reading: the target sees this client's backlog grow */
        struct epoll_event ev = {.events = 0, .data.ptr = c};
        epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
        c->paused = 1;
    }
}

/* "key": value lookup within the head (first 256 bytes) of a frame. */
static const char *find_key(const char *p, size_t n, const char *key) {
    size_t klen = strlen(key);
    if (n > 256) n = 256;
    const char *hit = memmem(p, n, key, klen);
    if (!hit) return NULL;
    hit += klen;
    while (hit < p + n && *hit == ' ') hit++;
    return hit;
}

static long long parse_int(const char *p, const char *end) {
    long long v = 0;
    while (p < end && *p >= '0' && *p <= '9') v = v * 10 + (*p++ - '0');
    return v;
}

static int sub_slot(conn_t *c, const char *name, size_t n) {
    for (int i = 0; i < c->nsubs; i++) {
        const char *s = names[c->chan[i]];
        if (strlen(s) == n && memcmp(s, name, n) == 0) return i;
    }
    return -1;
}

static void on_text(conn_t *c, const char *p, size_t n, int64_t t_us) {
    stats_t *s = c->slow ? &st_slow : &st_main;
    const char *end = p + n;
    s->frames++;
    s->bytes += (long long)n;
    const char *type = find_key(p, n, "\"type\":");
    if (!type) {
        s->errors++;
        return;
    }
    const char *ch = find_key(p, n, "\"channel\":");
    int slot = -1;
    if (ch && *ch == '"') {
        const char *q = memchr(ch + 1, '"', (size_t)(end - ch - 1));
        if (q) slot = sub_slot(c, ch + 1, (size_t)(q - ch - 1));
    }
    if (memcmp(type, "\"update\"", 8) == 0) {
        const char *sq = find_key(p, n, "\"seq\":");
        const char *ts = find_key(p, n, "\"ts\":");
        if (!sq || !ts || slot < 0) {
            s->errors++;
            return;
        }
        long long seq = parse_int(sq, end);
        long long last = c->last[slot];
        c->last[slot] = seq;
        if (last >= 0 && seq != last + 1) {
            if (seq <= last)
                s->dups++;
            else {
                s->gaps++;
                s->missing += seq - last - 1;
            }
            if (s->n_examples < 5)
                snprintf(s->gap_examples[s->n_examples++], 160, "conn %d %s: %lld -> %lld",
                         (int)(c - conns), names[c->chan[slot]], last, seq);
        }
        s->updates++;
        if (measuring && !c->slow) {
            if (lat_len == lat_cap) {
                lat_cap = lat_cap ? lat_cap * 2 : 1 << 20;
                lat = realloc(lat, lat_cap * sizeof(int64_t));
            }
            lat[lat_len++] = t_us - parse_int(ts, end);
        }
    } else if (memcmp(type, "\"snapshot\"", 10) == 0) {
        s->snapshots++;
        const char *sq = find_key(p, n, "\"seq\":");
        if (slot >= 0 && sq) c->last[slot] = parse_int(sq, end);
        if (--c->pending <= 0) mark_ready(c);
    } else if (memcmp(type, "\"error\"", 7) == 0) {
        s->errors++;
        if (--c->pending <= 0) mark_ready(c);
    } /* subscribed, pong, unsubscribed: nothing to count */
}

static void process(conn_t *c) {
    size_t pos = 0;
    int64_t t_us = now_us();
    if (c->state == S_HANDSHAKE) {
        unsigned char *e = memmem(c->buf, c->len, "\r\n\r\n", 4);
        if (!e) return;
        if (c->len < 12 || memcmp(c->buf, "HTTP/1.1 101", 12) != 0) {
            mark_closed(c);
            return;
        }
        pos = (size_t)(e - c->buf) + 4;
        c->state = S_OPEN;
        if (nchan_mode) {
            c->pending = 0;
            mark_ready(c);
        } else {
            for (int i = 0; i < c->nsubs; i++) {
                char req[160];
                int m = snprintf(req, sizeof req, "{\"op\":\"subscribe\",\"channel\":\"%s\",\"id\":%d}",
                                 names[c->chan[i]], i + 1);
                send_frame(c, 1, req, (size_t)m);
            }
        }
    }
    while (c->len - pos >= 2) {
        unsigned char *f = c->buf + pos;
        int opcode = f[0] & 0x0F;
        uint64_t n = f[1] & 0x7F;
        size_t h = 2;
        if (n == 126) {
            if (c->len - pos < 4) break;
            n = ((uint64_t)f[2] << 8) | f[3];
            h = 4;
        } else if (n == 127) {
            if (c->len - pos < 10) break;
            n = 0;
            for (int i = 0; i < 8; i++) n = (n << 8) | f[2 + i];
            h = 10;
        }
        if (c->len - pos < h + n) {
            if (h + n > c->cap) { /* a frame bigger than the buffer: grow it */
                memmove(c->buf, c->buf + pos, c->len - pos);
                c->len -= pos;
                pos = 0;
                c->cap = h + n + INIT_BUF;
                c->buf = realloc(c->buf, c->cap);
            }
            break;
        }
        const char *payload = (const char *)f + h;
        if (opcode == 1)
            on_text(c, payload, n, t_us);
        else if (opcode == 9)
            send_frame(c, 0xA, payload, n);
        else if (opcode == 8) {
            c->got_close = 1;
            c->close_code = n >= 2 ? (((unsigned char)payload[0] << 8) | (unsigned char)payload[1]) : 1005;
        }
        pos += h + n;
    }
    if (pos > 0) {
        memmove(c->buf, c->buf + pos, c->len - pos);
        c->len -= pos;
    }
}

static void on_readable(conn_t *c) {
    if (c->cap - c->len < 4096) {
        c->cap *= 2;
        c->buf = realloc(c->buf, c->cap);
    }
    ssize_t r = recv(c->fd, c->buf + c->len, c->cap - c->len, 0);
    if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) {
        mark_closed(c);
        return;
    }
    if (r < 0) return;
    c->len += (size_t)r;
    process(c);
}

static void start_connect(conn_t *c) {
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (c->slow && slow_rcvbuf > 0)
        setsockopt(c->fd, SOL_SOCKET, SO_RCVBUF, &slow_rcvbuf, sizeof slow_rcvbuf);
    c->started = mono();
    c->cap = INIT_BUF;
    c->buf = malloc(c->cap);
    c->state = S_CONNECTING;
    int r = connect(c->fd, (struct sockaddr *)&addr, sizeof addr);
    if (r < 0 && errno != EINPROGRESS) {
        c->state = S_CLOSED;
        close(c->fd);
        st_main.close_none++;
        return;
    }
    struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev);
}

static void on_connected(conn_t *c) {
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err) {
        mark_closed(c);
        return;
    }
    char req[8192];
    int m = snprintf(req, sizeof req, "GET %s", path);
    if (nchan_mode) {
        m += snprintf(req + m, sizeof req - (size_t)m, "/");
        for (int i = 0; i < c->nsubs; i++)
            m += snprintf(req + m, sizeof req - (size_t)m, "%s%s", i ? "," : "", names[c->chan[i]]);
    }
    m += snprintf(req + m, sizeof req - (size_t)m,
                  " HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
                  host, port);
    c->state = S_HANDSHAKE;
    send_all(c, req, (size_t)m);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

static void print_stats_json(FILE *o, stats_t *s) {
    static const char *labels[] = {"1000", "1001", "1008", "1009", "1011", "1013", "4000", "other"};
    fprintf(o, "\"frames\": %lld, \"updates\": %lld, \"bytes\": %lld, \"gaps\": %lld, "
               "\"missing\": %lld, \"dups\": %lld, \"snapshots\": %lld, \"errors\": %lld, \"closes\": {",
            s->frames, s->updates, s->bytes, s->gaps, s->missing, s->dups, s->snapshots, s->errors);
    int first = 1;
    for (int i = 0; i < 8; i++)
        if (s->close_codes[i]) {
            fprintf(o, "%s\"%s\": %lld", first ? "" : ", ", labels[i], s->close_codes[i]);
            first = 0;
        }
    if (s->close_none) fprintf(o, "%s\"none\": %lld", first ? "" : ", ", s->close_none);
    fprintf(o, "}, \"gap_examples\": [");
    for (int i = 0; i < s->n_examples; i++) fprintf(o, "%s\"%s\"", i ? ", " : "", s->gap_examples[i]);
    fprintf(o, "]");
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void emit_ready(double connect_started) {
    int connected = 0, ready = 0;
    printf("{\"event\": \"ready\", \"connections\": %d, ", n_conns);
    double *ms = malloc(sizeof(double) * (size_t)(n_conns + 1));
    int nms = 0;
    for (int i = 0; i < n_conns; i++) {
        conn_t *c = &conns[i];
        if (c->state != S_CLOSED || c->ready_at > 0) connected++;
        if (c->ready_at > 0 && c->state != S_CLOSED) ready++;
        if (c->ready_at > 0) ms[nms++] = (c->ready_at - c->started) * 1000;
    }
    qsort(ms, (size_t)nms, sizeof(double), cmp_double);
    printf("\"connected\": %d, \"ready\": %d, \"connect_seconds\": %.3f, \"subscribe_ms\": [",
           connected, ready, mono() - connect_started);
    for (int i = 0; i < nms; i++) printf("%s%.3f", i ? ", " : "", ms[i]);
    printf("], \"closes\": {");
    long long none = st_main.close_none + st_slow.close_none;
    if (none) printf("\"connect\": %lld", none);
    printf("}}\n");
    fflush(stdout);
    free(ms);
}

int main(int argc, char **argv) {
    if (argc != 9) {
        fprintf(stderr, "usage: %s HOST PORT PATH MODE PLAN CONNECT_RATE LATENCY_FILE SLOW_RCVBUF\n", argv[0]);
        return 2;
    }
    host = argv[1];
    port = atoi(argv[2]);
    path = argv[3];
    mode = argv[4];
    nchan_mode = strcmp(mode, "nchan") == 0;
    const char *plan_file = argv[5];
    double connect_rate = atof(argv[6]);
    const char *latency_file = argv[7];
    slow_rcvbuf = atoi(argv[8]);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)port);
    inet_pton(AF_INET, host, &addr.sin_addr);

    FILE *pf = fopen(plan_file, "r");
    if (!pf) {
        perror("plan");
        return 2;
    }
    size_t cap = 1024;
    conns = calloc(cap, sizeof(conn_t));
    char *line = NULL;
    size_t linecap = 0;
    while (getline(&line, &linecap, pf) > 0) {
        if ((size_t)n_conns == cap) {
            conns = realloc(conns, 2 * cap * sizeof(conn_t));
            memset(conns + cap, 0, cap * sizeof(conn_t));
            cap *= 2;
        }
        conn_t *c = &conns[n_conns++];
        char *rest = line;
        c->slow = (int)strtol(rest, &rest, 10);
        while (*rest == ' ') rest++;
        rest[strcspn(rest, "\r\n")] = 0;
        for (char *tok = strtok(rest, ","); tok && c->nsubs < MAX_SUBS; tok = strtok(NULL, ",")) {
            c->chan[c->nsubs] = add_channel(tok);
            c->last[c->nsubs] = -1;
            c->nsubs++;
        }
        c->pending = c->nsubs;
        c->fd = -1;
    }
    fclose(pf);

    epfd = epoll_create1(0);
    struct epoll_event in = {.events = EPOLLIN, .data.ptr = NULL};
    fcntl(0, F_SETFL, fcntl(0, F_GETFL) | O_NONBLOCK);
    epoll_ctl(epfd, EPOLL_CTL_ADD, 0, &in);

    double connect_started = mono(), last_connect_done = 0, cpu_start = 0, wall_start = 0;
    int next = 0, ready_sent = 0;
    char cmd[256];
    size_t cmd_len = 0;
    struct epoll_event events[1024];
    double slow_deadline = 0;
    for (;;) {
        double now = mono();
        while (next < n_conns && (connect_rate <= 0 || now >= connect_started + next / connect_rate))
            start_connect(&conns[next++]);
        if (next == n_conns && last_connect_done == 0) last_connect_done = now;
        if (!ready_sent && next == n_conns) {
            int waiting = 0;
            for (int i = 0; i < n_conns; i++)
                if (conns[i].state != S_CLOSED && conns[i].ready_at == 0) waiting++;
            if (waiting == 0 || now - last_connect_done > 60) {
                emit_ready(connect_started);
                ready_sent = 1;
            }
        }
        if (slow_deadline > 0) {
            int open_slow = 0, slow_total = 0, closed = 0;
            for (int i = 0; i < n_conns; i++)
                if (conns[i].slow) {
                    slow_total++;
                    if (conns[i].state == S_CLOSED) closed++;
                    else open_slow++;
                }
            if (open_slow == 0 || now > slow_deadline) {
                printf("{\"event\": \"slow\", \"slow\": %d, \"closed\": %d, ", slow_total, closed);
                print_stats_json(stdout, &st_slow);
                printf("}\n");
                fflush(stdout);
                slow_deadline = 0;
            }
        }
        int timeout = (next < n_conns || !ready_sent || slow_deadline > 0) ? 1 : 200;
        int n = epoll_wait(epfd, events, 1024, timeout);
        for (int i = 0; i < n; i++) {
            conn_t *c = events[i].data.ptr;
            if (c == NULL) { /* a command on stdin */
                ssize_t r = read(0, cmd + cmd_len, sizeof cmd - cmd_len - 1);
                if (r == 0) goto quit;
                if (r < 0) continue;
                cmd_len += (size_t)r;
                char *nl;
                while ((nl = memchr(cmd, '\n', cmd_len)) != NULL) {
                    *nl = 0;
                    if (strcmp(cmd, "start") == 0) {
                        memset(&st_main, 0, sizeof st_main);
                        lat_len = 0;
                        measuring = 1;
                        cpu_start = cpu_seconds();
                        wall_start = mono();
                        printf("{\"event\": \"started\"}\n");
                        fflush(stdout);
                    } else if (strcmp(cmd, "stop") == 0) {
                        measuring = 0;
                        double cpu = cpu_seconds() - cpu_start, wall = mono() - wall_start;
                        FILE *lf = fopen(latency_file, "wb");
                        if (lf) {
                            fwrite(lat, sizeof(int64_t), lat_len, lf);
                            fclose(lf);
                        }
                        int open = 0;
                        for (int j = 0; j < n_conns; j++) open += conns[j].state != S_CLOSED;
                        printf("{\"event\": \"stats\", \"cpu\": %.6f, \"wall\": %.6f, \"open\": %d, "
                               "\"latency_count\": %zu, ", cpu, wall, open, lat_len);
                        print_stats_json(stdout, &st_main);
                        printf("}\n");
                        fflush(stdout);
                    } else if (strcmp(cmd, "slow") == 0) {
                        for (int j = 0; j < n_conns; j++) {
                            conn_t *s = &conns[j];
                            if (s->slow && s->paused && s->state != S_CLOSED) {
                                struct epoll_event ev = {.events = EPOLLIN, .data.ptr = s};
                                epoll_ctl(epfd, EPOLL_CTL_MOD, s->fd, &ev);
                                s->paused = 0;
                            }
                        }
                        slow_deadline = mono() + 3;
                    } else if (strcmp(cmd, "quit") == 0) {
                        goto quit;
                    }
                    size_t used = (size_t)(nl - cmd) + 1;
                    memmove(cmd, nl + 1, cmd_len - used);
                    cmd_len -= used;
                }
                continue;
            }
            if (c->state == S_CLOSED) continue;
            if (c->state == S_CONNECTING) {
                on_connected(c);
                continue;
            }
            if (events[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) on_readable(c);
        }
    }
quit:
    for (int i = 0; i < n_conns; i++) {
        conns[i].expect_close = 1;
        if (conns[i].state != S_CLOSED) close(conns[i].fd);
    }
    printf("{\"event\": \"bye\"}\n");
    fflush(stdout);
    return 0;
}
