/*
 * loadgen: the benchmark's own request/response load generator and responder.
 *
 * bench/run.py compiles it with cc and runs it; it is not part of ocsbal.
 * It speaks any protocol whose messages are a header block ended by an
 * empty line and a body of Content-Length bytes: HTTP/1.1 and SIP.
 *
 *   loadgen client HOST PORT REQUEST_FILE CONNECTIONS SECONDS RATE WARMUP
 *
 *     Opens CONNECTIONS kept-alive TCP connections and sends the messages of
 *     REQUEST_FILE on each, one outstanding per connection, reading each
 *     answer (header block + Content-Length) before the next.  A file of
 *     several messages is a conversation: each connection sends them in
 *     turn, and again from the first.  CRLFs before a message (SIP
 *     keep-alives) are sent and read with it.
 *
 *     RATE = 0: closed loop, each connection sends its next request as soon
 *     as its response is in; the figure is the message rate.
 *
 *     RATE > 0: open loop at RATE requests a second in all, request j being
 *     due at start + j / RATE on connection j % CONNECTIONS (evenly spread,
 *     as wrk2 does).  A request whose connection still waits for an earlier
 *     response is sent as soon as that response is in, and its latency is
 *     counted from when it was due, not from when it was sent, so a stall is
 *     not hidden (no coordinated omission).  epoll_pwait2, with a timeout in
 *     nanoseconds and one nanosecond of timer slack, wakes the loop when the
 *     next request is due.
 *
 *     Requests due in the first WARMUP seconds are not counted; requests due
 *     in the next SECONDS are.  Prints one JSON object: responses counted,
 *     rate, errors, requests sent over a millisecond after they were due
 *     ("late": the path fell behind), and latency percentiles in
 *     microseconds.
 *
 *   loadgen serve HOST PORT[,PORT...] RESPONSE_FILE
 *
 *     Answers every request read, on any connection, with a message of
 *     RESPONSE_FILE: the first to the first request of a connection, the
 *     second to its second, and so on, again from the first after the last
 *     (so that a conversation's answers follow its requests).  One thread,
 *     edge-triggered epoll, until killed.
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
#include <strings.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BUFFER (256 * 1024)
#define EVENTS 256

static void die(const char *what) {
    perror(what);
    exit(2);
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static char *read_file(const char *path, size_t *size) {
    FILE *f = fopen(path, "rb");
    if (!f)
        die(path);
    char *data = malloc(BUFFER);
    *size = fread(data, 1, BUFFER, f);
    fclose(f);
    return data;
}

/* Length of the first whole message in data[0:n], 0 if it is incomplete.
 * CRLFs before it (SIP keep-alives) are counted into it. */
static size_t message_length(const char *data, size_t n) {
    size_t start = 0;
    while (start + 1 < n && data[start] == '\r' && data[start + 1] == '\n')
        start += 2;
    const char *end = memmem(data + start, n - start, "\r\n\r\n", 4);
    if (!end)
        return 0;
    size_t head = (size_t)(end - data) + 4;
    size_t body = 0;
    for (const char *line = data + start; line < end;) {
        const char *next = memmem(line, (size_t)(end - line), "\r\n", 2);
        if (!next)
            next = end;
        size_t len = (size_t)(next - line);
        const char *value = NULL;
        if (len > 15 && strncasecmp(line, "content-length:", 15) == 0)
            value = line + 15;
        else if (len > 2 && strncasecmp(line, "l:", 2) == 0)
            value = line + 2;
        if (value)
            body = strtoul(value, NULL, 10);
        line = next + 2;
    }
    return head + body <= n ? head + body : 0;
}

/* A file's messages, back to back, as message_length frames them. */
typedef struct {
    const char *data;
    size_t count;
    size_t *start, *length;
} Script;

static Script script(const char *path) {
    Script t = {0};
    size_t size;
    t.data = read_file(path, &size);
    t.start = malloc(sizeof *t.start * (size / 4 + 1));
    t.length = malloc(sizeof *t.length * (size / 4 + 1));
    for (size_t at = 0; at < size;) {
        size_t n = message_length(t.data + at, size - at);
        if (!n) {
            fprintf(stderr, "%s: not whole messages from byte %zu\n", path, at);
            exit(2);
        }
        t.start[t.count] = at;
        t.length[t.count++] = n;
        at += n;
    }
    if (!t.count) {
        fprintf(stderr, "%s: no message\n", path);
        exit(2);
    }
    return t;
}

static int nonblocking_socket(void) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        die("socket");
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

static struct sockaddr_in address(const char *host, int port) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &a.sin_addr) != 1) {
        fprintf(stderr, "not an IPv4 address: %s\n", host);
        exit(2);
    }
    return a;
}

/* ---------------------------------------------------------------- client */

typedef struct {
    int fd;
    int connected;
    int busy;         /* a request is outstanding */
    uint64_t k;       /* requests sent on this connection */
    uint64_t started; /* when the outstanding request was due (or sent) */
    size_t have;
    char *in;
} Conn;

static struct {
    struct sockaddr_in server;
    Script requests;
    int count;
    double rate;
    uint64_t start, measure_from, measure_to;
    uint64_t *latencies;
    size_t n_latencies, cap_latencies;
    uint64_t errors, late;
    int epoll;
} C;

static uint64_t due(int i, uint64_t k) {
    return C.start + (uint64_t)(((double)i + (double)k * C.count) * 1e9 / C.rate);
}

/* Level-triggered: EPOLLOUT until connected, then EPOLLIN, one read an event. */
static void watch(Conn *c, int i, int op, uint32_t events) {
    struct epoll_event ev = {.events = events, .data.u64 = (uint64_t)i};
    if (epoll_ctl(C.epoll, op, c->fd, &ev) < 0)
        die("epoll_ctl");
}

static void open_conn(Conn *c, int i) {
    c->fd = nonblocking_socket();
    c->connected = c->busy = 0;
    c->have = 0;
    if (connect(c->fd, (struct sockaddr *)&C.server, sizeof C.server) < 0 &&
        errno != EINPROGRESS)
        die("connect");
    watch(c, i, EPOLL_CTL_ADD, EPOLLOUT);
}

static void lost(Conn *c, int i) {
    C.errors++;
    close(c->fd);
    open_conn(c, i);
}

/* Once connect() is done: 1 if it worked, else 0 (and errno says why). */
static int connected(Conn *c, int i) {
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err) {
        errno = err;
        return 0;
    }
    c->connected = 1;
    watch(c, i, EPOLL_CTL_MOD, EPOLLIN);
    return 1;
}

static void send_request(Conn *c, int i, uint64_t when) {
    size_t m = c->k % C.requests.count, size = C.requests.length[m];
    ssize_t sent = send(c->fd, C.requests.data + C.requests.start[m], size, MSG_NOSIGNAL);
    if (sent != (ssize_t)size) { /* one message fits any socket's buffer */
        lost(c, i);
        return;
    }
    c->busy = 1;
    c->started = when;
    c->k++;
}

static void record(uint64_t due_at, uint64_t latency) {
    if (due_at < C.measure_from || due_at >= C.measure_to)
        return;
    if (C.n_latencies == C.cap_latencies) {
        C.cap_latencies = C.cap_latencies ? 2 * C.cap_latencies : 65536;
        C.latencies = realloc(C.latencies, C.cap_latencies * sizeof *C.latencies);
        if (!C.latencies)
            die("realloc");
    }
    C.latencies[C.n_latencies++] = latency;
}

/* Send what is due on an idle connection; return when it next needs waking. */
static uint64_t pump(Conn *c, int i, uint64_t now) {
    if (!c->connected || c->busy)
        return UINT64_MAX;
    if (C.rate <= 0) {
        if (now < C.measure_to)
            send_request(c, i, now);
        return UINT64_MAX;
    }
    uint64_t when = due(i, c->k);
    if (when >= C.measure_to)
        return UINT64_MAX;
    if (when > now)
        return when;
    if (now - when > 1000000 && when >= C.measure_from)
        C.late++; /* counted, and sent over a millisecond after it was due */
    send_request(c, i, when);
    return UINT64_MAX;
}

static void readable(Conn *c, int i) {
    ssize_t got = recv(c->fd, c->in + c->have, BUFFER - c->have, 0);
    if (got < 0 && errno == EAGAIN)
        return;
    if (got <= 0) {
        lost(c, i);
        return;
    }
    c->have += (size_t)got;
    size_t n;
    while ((n = message_length(c->in, c->have)) > 0) {
        uint64_t t = now_ns();
        if (c->busy)
            record(c->started, t - c->started);
        c->busy = 0;
        memmove(c->in, c->in + n, c->have - n);
        c->have -= n;
        pump(c, i, t);
    }
    if (c->have == BUFFER)
        lost(c, i);
}

static int compare(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

static double percentile(double p) {
    if (!C.n_latencies)
        return 0;
    size_t at = (size_t)(p / 100.0 * (double)(C.n_latencies - 1) + 0.5);
    return (double)C.latencies[at] / 1000.0;
}

/* Wait for events until ``deadline`` (ns, CLOCK_MONOTONIC) at most. */
static int wait_until(struct epoll_event *events, uint64_t now, uint64_t deadline) {
    uint64_t ns = deadline > now ? deadline - now : 0;
    struct timespec timeout = {.tv_sec = (time_t)(ns / 1000000000u),
                               .tv_nsec = (long)(ns % 1000000000u)};
    int n = epoll_pwait2(C.epoll, events, EVENTS, &timeout, NULL);
    if (n < 0 && errno != EINTR)
        die("epoll_pwait2");
    return n < 0 ? 0 : n;
}

static int client(int argc, char **argv) {
    if (argc != 9) {
        fprintf(stderr, "usage: loadgen client HOST PORT REQUEST CONNECTIONS SECONDS RATE WARMUP\n");
        return 2;
    }
    C.server = address(argv[2], atoi(argv[3]));
    C.requests = script(argv[4]);
    C.count = atoi(argv[5]);
    double seconds = atof(argv[6]), warmup = atof(argv[8]);
    C.rate = atof(argv[7]);
    prctl(PR_SET_TIMERSLACK, 1UL); /* wake when asked, not up to 50 us later */
    C.epoll = epoll_create1(EPOLL_CLOEXEC);
    Conn *conns = calloc((size_t)C.count, sizeof *conns);
    for (int i = 0; i < C.count; i++) {
        conns[i].in = malloc(BUFFER);
        open_conn(&conns[i], i);
    }
    /* Every connection is open before the clock starts. */
    uint64_t give_up = now_ns() + 10000000000u;
    int open_count = 0;
    struct epoll_event events[EVENTS];
    while (open_count < C.count) {
        uint64_t now = now_ns();
        if (now > give_up) {
            fprintf(stderr, "loadgen: only %d of %d connections opened in 10 s\n", open_count,
                    C.count);
            return 1;
        }
        int n = wait_until(events, now, now + 100000000u);
        for (int e = 0; e < n; e++) {
            int i = (int)events[e].data.u64;
            if (conns[i].connected)
                continue;
            if (!connected(&conns[i], i))
                die("connect");
            open_count++;
        }
    }
    C.start = now_ns();
    C.measure_from = C.start + (uint64_t)(warmup * 1e9);
    C.measure_to = C.measure_from + (uint64_t)(seconds * 1e9);
    uint64_t drain_until = C.measure_to + 2000000000u; /* late answers: 2 s more */
    for (;;) {
        uint64_t now = now_ns(), wake = UINT64_MAX;
        int outstanding = 0;
        for (int i = 0; i < C.count; i++) {
            uint64_t w = pump(&conns[i], i, now);
            wake = w < wake ? w : wake;
            outstanding += conns[i].busy;
        }
        if (now >= C.measure_to && (!outstanding || now >= drain_until))
            break;
        uint64_t tick = now + (now < C.measure_to ? 100000000u : 10000000u);
        int n = wait_until(events, now, wake < tick ? wake : tick);
        for (int e = 0; e < n; e++) {
            int i = (int)events[e].data.u64;
            Conn *c = &conns[i];
            if (!c->connected) {
                if (!connected(c, i))
                    lost(c, i);
                continue;
            }
            readable(c, i);
        }
    }
    uint64_t unanswered = 0;
    for (int i = 0; i < C.count; i++)
        unanswered += (uint64_t)conns[i].busy;
    qsort(C.latencies, C.n_latencies, sizeof *C.latencies, compare);
    printf("{\"responses\": %zu, \"seconds\": %.3f, \"rate\": %.1f, \"target_rate\": %.1f, "
           "\"errors\": %llu, \"unanswered\": %llu, \"late\": %llu, \"p50_us\": %.1f, "
           "\"p90_us\": %.1f, \"p99_us\": %.1f, \"p999_us\": %.1f, \"max_us\": %.1f}\n",
           C.n_latencies, seconds, (double)C.n_latencies / seconds, C.rate,
           (unsigned long long)C.errors, (unsigned long long)unanswered,
           (unsigned long long)C.late, percentile(50), percentile(90), percentile(99),
           percentile(99.9), percentile(100));
    return 0;
}

/* ---------------------------------------------------------------- server */

typedef struct {
    int fd;
    int listening;
    uint64_t k; /* requests answered */
    size_t have, pending, written;
    char *in, *out;
} Peer;

static Script responses;

static void close_peer(Peer *p) {
    close(p->fd);
    free(p->in);
    free(p->out);
    free(p);
}

static int flush(Peer *p) {
    while (p->written < p->pending) {
        ssize_t n = send(p->fd, p->out + p->written, p->pending - p->written, MSG_NOSIGNAL);
        if (n < 0)
            return errno == EAGAIN ? 0 : -1;
        p->written += (size_t)n;
    }
    p->pending = p->written = 0;
    return 0;
}

/* Read what is there and answer every whole request; -1 once it is closed. */
static int serve_peer(Peer *p) {
    for (;;) {
        ssize_t got = recv(p->fd, p->in + p->have, BUFFER - p->have, 0);
        if (got == 0 || (got < 0 && errno != EAGAIN))
            return -1;
        if (got < 0)
            return flush(p);
        p->have += (size_t)got;
        size_t n;
        while ((n = message_length(p->in, p->have)) > 0) {
            size_t m = p->k++ % responses.count, size = responses.length[m];
            if (p->pending + size > BUFFER)
                return -1; /* a client that does not read its answers */
            memcpy(p->out + p->pending, responses.data + responses.start[m], size);
            p->pending += size;
            memmove(p->in, p->in + n, p->have - n);
            p->have -= n;
        }
        if (p->have == BUFFER || flush(p) < 0)
            return -1;
    }
}

static int serve(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: loadgen serve HOST PORT[,PORT...] RESPONSE\n");
        return 2;
    }
    responses = script(argv[4]);
    int epoll = epoll_create1(EPOLL_CLOEXEC);
    for (char *port = strtok(argv[3], ","); port; port = strtok(NULL, ",")) {
        struct sockaddr_in a = address(argv[2], atoi(port));
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0 || listen(fd, 4096) < 0)
            die("listen");
        Peer *l = calloc(1, sizeof *l);
        l->fd = fd;
        l->listening = 1;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = l};
        epoll_ctl(epoll, EPOLL_CTL_ADD, fd, &ev);
    }
    struct epoll_event events[EVENTS];
    for (;;) {
        int n = epoll_wait(epoll, events, EVENTS, -1);
        if (n < 0 && errno != EINTR)
            die("epoll_wait");
        for (int e = 0; e < n; e++) {
            Peer *p = events[e].data.ptr;
            if (p->listening) {
                int fd;
                while ((fd = accept4(p->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
                    int one = 1;
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    Peer *q = calloc(1, sizeof *q);
                    q->fd = fd;
                    q->in = malloc(BUFFER);
                    q->out = malloc(BUFFER);
                    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLET, .data.ptr = q};
                    epoll_ctl(epoll, EPOLL_CTL_ADD, fd, &ev);
                }
                continue;
            }
            if (serve_peer(p) < 0)
                close_peer(p); /* closing the descriptor leaves the epoll set */
        }
    }
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "client") == 0)
        return client(argc, argv);
    if (argc > 1 && strcmp(argv[1], "serve") == 0)
        return serve(argc, argv);
    fprintf(stderr, "usage: loadgen client ... | loadgen serve ...\n");
    return 2;
}
