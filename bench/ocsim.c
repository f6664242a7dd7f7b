/*
 * ocsim: an Office Communications Server 2007 R2 pool and its clients, on
 * loopback, for bench/pool_scale.py (which compiles it with cc and runs it;
 * it is not part of ocsbal).  One thread, epoll, in each process.
 *
 *   ocsim serve HOST PORT NAME [BODY_BYTES [STATS_SECONDS]]
 *
 *     A front-end server on HOST:PORT.  On every connection it answers
 *     REGISTER with 200 OK (the Contact granted the Expires asked, 3600 s
 *     if none), SUBSCRIBE with 200 OK and a roaming-contacts XML body of
 *     about BODY_BYTES (1500 by default), any other request with 200 OK,
 *     and a keep-alive ping (CRLF CRLF, RFC 5626) with a pong (CRLF).
 *     Responses the client sends are read and dropped.  Every
 *     STATS_SECONDS (1 by default) it prints one JSON line on stdout:
 *     connections open, accepted and closed, requests by kind, errors.
 *     Runs until killed.
 *
 *   ocsim clients VIP PORT N SRC_FIRST SRC_COUNT [OPTION VALUE]...
 *
 *     N simulated Office Communicator 2007 R2 clients, each with ONE TCP
 *     connection to VIP:PORT, bound to one of SRC_COUNT source addresses
 *     from SRC_FIRST on (client i uses address i % SRC_COUNT; .0 and .255
 *     are skipped).  IP_BIND_ADDRESS_NO_PORT defers the choice of the
 *     source port to connect(), so a port is only unique per address pair.
 *     Each client, once connected, sends a REGISTER (Office Communicator's
 *     headers, Expires 3600, a Call-ID and From tag of its own) and waits
 *     for the 200; then, until told otherwise, it sends a keep-alive ping
 *     every --keepalive seconds and times the pong, sends a REGISTER
 *     refresh every --refresh seconds and a SUBSCRIBE (answered 200 with
 *     XML) every --subscribe seconds or so.  The first of each is due at a
 *     random moment within its interval, so that the load is spread.  A
 *     client has at most one request outstanding; whatever falls due
 *     meanwhile waits for the answer.  A client whose connection fails or
 *     is lost, or whose answer does not come within --timeout seconds,
 *     closes it and connects again after --retry seconds (times a random
 *     factor from 0.5 to 1.5); every such event is counted, by kind.
 *
 *     Options: --keepalive S (30), --refresh S (1800), --subscribe S (600;
 *     0 for none), --expires S (3600), --timeout S (10), --retry S (1),
 *     --inflight K (2000: at most K clients connecting or registering at
 *     once), --first I (0: the number of this process's first client, for
 *     unique names across processes), --seed X.
 *
 *     Nothing is connected until told.  Commands, one a line on stdin, each
 *     answered by one JSON line on stdout:
 *
 *       connect RATE TIMEOUT  connect every client not connected, RATE new
 *                             connections a second (0: as fast as the
 *                             --inflight bound allows); answered once all
 *                             N are registered, or after TIMEOUT seconds.
 *       storm TIMEOUT         close every connection at once, then connect
 *                             and register them all again as fast as
 *                             possible; answered as connect is.
 *       stats                 what happened since the last stats (or
 *                             connect, or storm): clients registered now
 *                             and at the fewest, keep-alive round trips
 *                             (percentiles and a histogram in us),
 *                             refreshes, SUBSCRIBEs, failures by kind.
 *       quit                  exit.
 *
 *     The end of stdin is quit.  Every wait is bounded by --timeout.
 *
 *     Each client's next deadline or request sits in a timer wheel of
 *     1 ms slots, so each request leaves within about a millisecond of
 *     when it is due, and a round trip is timed from the send() to the
 *     recv() that brings its answer (CLOCK_MONOTONIC).  The histograms
 *     are exact below 64 us and within about 3 % above; a report gives
 *     their non-empty buckets, [low, width, count], so that the reports
 *     of several processes can be merged (bench/pool_scale.py does).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

#define READ_BUFFER (256 * 1024)
#define MAX_MESSAGE (64 * 1024) /* a peer buffering more than this is dropped */
#define EVENTS 512

static void die(const char *what) {
    perror(what);
    exit(2);
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t seconds_ns(double s) { return (uint64_t)(s * 1e9); }

static uint64_t rng_state = 88172645463325252ull;

static uint64_t rng(void) { /* xorshift64 */
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

/* Uniform in [low, high). */
static double uniform(double low, double high) {
    return low + (high - low) * (double)(rng() >> 11) / 9007199254740992.0;
}

static struct sockaddr_in address(const char *host, int port) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &a.sin_addr) != 1) {
        fprintf(stderr, "not an IPv4 address: %s\n", host);
        exit(2);
    }
    return a;
}

static rlim_t raise_nofile(void) {
    struct rlimit r;
    if (getrlimit(RLIMIT_NOFILE, &r) < 0)
        die("getrlimit");
    r.rlim_cur = r.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &r) < 0)
        die("setrlimit");
    return r.rlim_cur;
}

/* A buffer that grows; what a connection has not finished reading or sending. */
typedef struct {
    char *data;
    size_t size, cap;
} Bytes;

static void bytes_add(Bytes *b, const char *data, size_t n) {
    if (b->size + n > b->cap) {
        size_t cap = b->cap ? b->cap : 1024;
        while (cap < b->size + n)
            cap *= 2;
        b->data = realloc(b->data, cap);
        if (!b->data)
            die("realloc");
        b->cap = cap;
    }
    memcpy(b->data + b->size, data, n);
    b->size += n;
}

static void bytes_free(Bytes *b) {
    free(b->data);
    b->data = NULL;
    b->size = b->cap = 0;
}

/* Keep data[0:n] from ``from`` on, or nothing. */
static void bytes_keep(Bytes *b, const char *data, size_t n, size_t from) {
    if (from >= n) {
        bytes_free(b);
        return;
    }
    if (data == b->data) {
        memmove(b->data, b->data + from, n - from);
        b->size = n - from;
    } else {
        b->size = 0;
        bytes_add(b, data + from, n - from);
    }
}

/* ------------------------------------------------------------- framing */

/* The header block of the message at data[0:n] (no leading CRLFs): its
 * length up to and including CRLF CRLF, the whole message's length in
 * *total; 0 if it is not whole yet, -1 if it never will be. */
static long frame(const char *data, size_t n, size_t *total) {
    const char *end = memmem(data, n, "\r\n\r\n", 4);
    if (!end)
        return n > MAX_MESSAGE ? -1 : 0;
    size_t head = (size_t)(end - data) + 4;
    size_t body = 0;
    for (const char *line = data; line < end;) {
        const char *next = memmem(line, (size_t)(end - line) + 2, "\r\n", 2);
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
    if (body > MAX_MESSAGE)
        return -1;
    if (head + body > n)
        return 0;
    *total = head + body;
    return (long)head;
}

/* The value of header ``name`` (or its compact form ``compact``, if not 0)
 * in the header block head[0:n], from the second line on; NULL if absent.
 * Its length in *len.  After ``after`` (a previous value) if not NULL. */
static const char *header(const char *head, size_t n, const char *name, char compact,
                          size_t *len, const char *after) {
    size_t name_len = strlen(name);
    const char *end = head + n;
    const char *line = memmem(head, n, "\r\n", 2);
    if (!line)
        return NULL;
    line += 2;
    while (line < end) {
        const char *next = memmem(line, (size_t)(end - line), "\r\n", 2);
        if (!next)
            next = end;
        const char *colon = memchr(line, ':', (size_t)(next - line));
        if (colon && line > after) {
            const char *name_end = colon;
            while (name_end > line && (name_end[-1] == ' ' || name_end[-1] == '\t'))
                name_end--;
            size_t l = (size_t)(name_end - line);
            if ((l == name_len && strncasecmp(line, name, l) == 0) ||
                (compact && l == 1 && (line[0] | 0x20) == compact)) {
                const char *v = colon + 1;
                while (v < next && (*v == ' ' || *v == '\t'))
                    v++;
                *len = (size_t)(next - v);
                return v;
            }
        }
        line = next + 2;
    }
    return NULL;
}

/* --------------------------------------------------------------- server */

typedef struct {
    int fd;
    Bytes in, out;
} Peer;

static struct {
    const char *name;
    char *body;
    size_t body_len;
    int epoll;
    uint64_t open, accepted, closed, registers, subscribes, pings, others, responses,
        errors, overflows;
} S;

/* A roaming-contacts list of about ``size`` bytes, as a pool answers a
 * SUBSCRIBE to vnd-microsoft-roaming-contacts. */
static void make_body(size_t size) {
    Bytes b = {0};
    const char *open_list = "<?xml version=\"1.0\" encoding=\"utf-8\"?>\r\n<contactList "
                            "deltaNum=\"812\" "
                            "xmlns=\"http://schemas.microsoft.com/2006/09/sip/"
                            "roaming-contacts\">\r\n<group id=\"1\" name=\"~\" "
                            "externalURI=\"\"/>\r\n";
    bytes_add(&b, open_list, strlen(open_list));
    char item[256];
    for (int n = 0; b.size + 16 < size; n++) {
        int len = snprintf(item, sizeof item,
                           "<contact uri=\"user%05d@contoso.com\" name=\"\" groups=\"1\" "
                           "subscribed=\"true\" externalURI=\"\"/>\r\n",
                           n);
        bytes_add(&b, item, (size_t)len);
    }
    bytes_add(&b, "</contactList>", 14);
    S.body = b.data;
    S.body_len = b.size;
}

static void add_line(Bytes *out, const char *name, const char *value, size_t len) {
    bytes_add(out, name, strlen(name));
    bytes_add(out, value, len);
    bytes_add(out, "\r\n", 2);
}

/* The answer to the request whose header block is head[0:n]. */
static void answer(Bytes *out, const char *head, size_t n) {
    const char *sp = memchr(head, ' ', n);
    size_t method_len = sp ? (size_t)(sp - head) : 0;
    int is_register = method_len == 8 && memcmp(head, "REGISTER", 8) == 0;
    int is_subscribe = method_len == 9 && memcmp(head, "SUBSCRIBE", 9) == 0;
    if (is_register)
        S.registers++;
    else if (is_subscribe)
        S.subscribes++;
    else
        S.others++;
    bytes_add(out, "SIP/2.0 200 OK\r\n", 16);
    size_t len;
    const char *v = NULL;
    while ((v = header(head, n, "via", 'v', &len, v)))
        add_line(out, "Via: ", v, len);
    if ((v = header(head, n, "from", 'f', &len, NULL)))
        add_line(out, "From: ", v, len);
    if ((v = header(head, n, "to", 't', &len, NULL))) {
        bytes_add(out, "To: ", 4);
        bytes_add(out, v, len);
        if (!memmem(v, len, ";tag=", 5)) {
            char tag[64];
            int l = snprintf(tag, sizeof tag, ";tag=%s-%08llx", S.name,
                             (unsigned long long)(rng() & 0xffffffffu));
            bytes_add(out, tag, (size_t)l);
        }
        bytes_add(out, "\r\n", 2);
    }
    if ((v = header(head, n, "call-id", 'i', &len, NULL)))
        add_line(out, "Call-ID: ", v, len);
    if ((v = header(head, n, "cseq", 0, &len, NULL)))
        add_line(out, "CSeq: ", v, len);
    char line[512];
    if (is_register) {
        long expires = 3600;
        if ((v = header(head, n, "expires", 0, &len, NULL)))
            expires = strtol(v, NULL, 10);
        if ((v = header(head, n, "contact", 'm', &len, NULL))) {
            /* the Contact without its parameters after the URI, then expires */
            const char *gt = memchr(v, '>', len);
            size_t keep = gt ? (size_t)(gt - v) + 1 : len;
            bytes_add(out, "Contact: ", 9);
            bytes_add(out, v, keep);
            int l = snprintf(line, sizeof line, ";expires=%ld\r\n", expires);
            bytes_add(out, line, (size_t)l);
        }
        int l = snprintf(line, sizeof line,
                         "Expires: %ld\r\n"
                         "ms-keep-alive: UAS; tcp=no; hop-hop=yes; end-point=no; "
                         "timeout=300\r\n"
                         "Authentication-Info: Kerberos "
                         "rspauth=\"602306092A864886F7120102020201\", srand=\"3A1B2C4D\", "
                         "snum=\"3\", opaque=\"8F7AD3C4\", qop=\"auth\", "
                         "targetname=\"sip/ocspool.contoso.com\", realm=\"SIP "
                         "Communications Service\"\r\n"
                         "presence-state: register-action=\"added\"\r\n"
                         "Allow-Events: vnd-microsoft-provisioning,vnd-microsoft-roaming-"
                         "contacts,presence,presence.wpending,vnd-microsoft-roaming-self\r\n"
                         "Server: RTC/3.5 %s\r\nContent-Length: 0\r\n\r\n",
                         expires, S.name);
        bytes_add(out, line, (size_t)l);
    } else if (is_subscribe) {
        int l = snprintf(line, sizeof line,
                         "Expires: 28800\r\n"
                         "Content-Type: application/vnd-microsoft-roaming-contacts+xml\r\n"
                         "Event: vnd-microsoft-roaming-contacts\r\n"
                         "subscription-state: active;expires=28800\r\n"
                         "Supported: ms-benotify, ms-piggyback-first-notify\r\n"
                         "Server: RTC/3.5 %s\r\nContent-Length: %zu\r\n\r\n",
                         S.name, S.body_len);
        bytes_add(out, line, (size_t)l);
        bytes_add(out, S.body, S.body_len);
    } else {
        int l = snprintf(line, sizeof line, "Server: RTC/3.5 %s\r\nContent-Length: 0\r\n\r\n",
                         S.name);
        bytes_add(out, line, (size_t)l);
    }
}

static void watch_peer(Peer *p, int op, uint32_t events) {
    struct epoll_event ev = {.events = events, .data.ptr = p};
    if (epoll_ctl(S.epoll, op, p->fd, &ev) < 0)
        die("epoll_ctl");
}

/* Send what is waiting; -1 if the connection failed. */
static int flush_peer(Peer *p) {
    size_t sent = 0;
    while (sent < p->out.size) {
        ssize_t n = send(p->fd, p->out.data + sent, p->out.size - sent, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN)
                break;
            return -1;
        }
        sent += (size_t)n;
    }
    if (sent == p->out.size) {
        bytes_free(&p->out);
        return 0;
    }
    if (p->out.size - sent > MAX_MESSAGE * 4) {
        S.overflows++;
        return -1; /* a client that does not read its answers */
    }
    memmove(p->out.data, p->out.data + sent, p->out.size - sent);
    p->out.size -= sent;
    return 0;
}

static void close_peer(Peer *p, int error) {
    if (error)
        S.errors++;
    S.closed++;
    S.open--;
    close(p->fd); /* which takes it out of the epoll set */
    bytes_free(&p->in);
    bytes_free(&p->out);
    free(p);
}

/* Answer every whole message in data[0:n]; return how much was used, or -1. */
static long serve_messages(Peer *p, const char *data, size_t n) {
    size_t at = 0;
    while (at < n) {
        if (data[at] == '\r' || data[at] == '\n') {
            /* CRLF CRLF is a ping, answered CRLF; a lone CRLF is a pong (dropped) */
            size_t left = n - at;
            if (left >= 4 && memcmp(data + at, "\r\n\r\n", 4) == 0) {
                bytes_add(&p->out, "\r\n", 2);
                S.pings++;
                at += 4;
            } else if (left >= 3 && memcmp(data + at, "\r\n", 2) == 0 && data[at + 2] != '\r') {
                at += 2;
            } else if (left < 4 && memcmp(data + at, "\r\n\r\n", left) == 0) {
                break; /* the rest of the ping (or of a pong) is still to come */
            } else {
                return -1;
            }
            continue;
        }
        size_t total;
        long head = frame(data + at, n - at, &total);
        if (head < 0)
            return -1;
        if (head == 0)
            break;
        if (memcmp(data + at, "SIP/2.0 ", 8) == 0)
            S.responses++;
        else
            answer(&p->out, data + at, (size_t)head);
        at += total;
    }
    return (long)at;
}

static char read_buffer[READ_BUFFER];

/* Read everything there (edge-triggered), answer it; -1 once closed. */
static int serve_peer(Peer *p, uint32_t events) {
    if (events & EPOLLOUT && p->out.size && flush_peer(p) < 0)
        return -1;
    if (!(events & (EPOLLIN | EPOLLHUP | EPOLLERR)))
        return 0;
    for (;;) {
        ssize_t got = recv(p->fd, read_buffer, sizeof read_buffer, 0);
        if (got == 0)
            return -2; /* closed by the client: no error */
        if (got < 0)
            return errno == EAGAIN ? 0 : -1;
        const char *data = read_buffer;
        size_t n = (size_t)got;
        if (p->in.size) {
            bytes_add(&p->in, read_buffer, n);
            data = p->in.data;
            n = p->in.size;
        }
        long used = serve_messages(p, data, n);
        if (used < 0)
            return -1;
        bytes_keep(&p->in, data, n, (size_t)used);
        if (p->in.size > MAX_MESSAGE)
            return -1;
        if (p->out.size && flush_peer(p) < 0)
            return -1;
        if ((size_t)got < sizeof read_buffer && !(events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)))
            return 0; /* drained: edge-triggered epoll says when there is more */
        /* else read on: the end may have come with the data, and no edge follows it */
    }
}

static void print_server_stats(void) {
    printf("{\"server\": \"%s\", \"open\": %llu, \"accepted\": %llu, \"closed\": %llu, "
           "\"registers\": %llu, \"subscribes\": %llu, \"pings\": %llu, \"others\": %llu, "
           "\"responses\": %llu, \"errors\": %llu, \"overflows\": %llu}\n",
           S.name, (unsigned long long)S.open, (unsigned long long)S.accepted,
           (unsigned long long)S.closed, (unsigned long long)S.registers,
           (unsigned long long)S.subscribes, (unsigned long long)S.pings,
           (unsigned long long)S.others, (unsigned long long)S.responses,
           (unsigned long long)S.errors, (unsigned long long)S.overflows);
    fflush(stdout);
}

static int serve(int argc, char **argv) {
    if (argc < 5 || argc > 7) {
        fprintf(stderr, "usage: ocsim serve HOST PORT NAME [BODY_BYTES [STATS_SECONDS]]\n");
        return 2;
    }
    struct sockaddr_in a = address(argv[2], atoi(argv[3]));
    S.name = argv[4];
    make_body(argc > 5 ? strtoul(argv[5], NULL, 10) : 1500);
    double every = argc > 6 ? atof(argv[6]) : 1.0;
    rng_state ^= (uint64_t)getpid() * 0x9E3779B97F4A7C15ull;
    raise_nofile();
    signal(SIGPIPE, SIG_IGN);
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    S.epoll = epoll_create1(EPOLL_CLOEXEC);
    int listener = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(listener, (struct sockaddr *)&a, sizeof a) < 0 || listen(listener, 65535) < 0)
        die("listen");
    Peer listening = {.fd = listener};
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &listening};
    epoll_ctl(S.epoll, EPOLL_CTL_ADD, listener, &ev);
    struct epoll_event events[EVENTS];
    uint64_t next_stats = now_ns();
    for (;;) {
        uint64_t now = now_ns();
        if (now >= next_stats) {
            print_server_stats();
            next_stats = now + seconds_ns(every);
        }
        int timeout = (int)((next_stats - now) / 1000000u) + 1;
        int n = epoll_wait(S.epoll, events, EVENTS, timeout);
        if (n < 0 && errno != EINTR)
            die("epoll_wait");
        for (int e = 0; e < n; e++) {
            Peer *p = events[e].data.ptr;
            if (p == &listening) {
                for (int i = 0; i < 1024; i++) { /* a bounded batch; level-triggered */
                    int fd = accept4(listener, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                    if (fd < 0) {
                        if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
                            S.errors++; /* EMFILE: the client will time out */
                        break;
                    }
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    Peer *q = calloc(1, sizeof *q);
                    q->fd = fd;
                    S.accepted++;
                    S.open++;
                    watch_peer(q, EPOLL_CTL_ADD, EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET);
                }
                continue;
            }
            int r = serve_peer(p, events[e].events);
            if (r < 0)
                close_peer(p, r == -1);
        }
    }
}

/* -------------------------------------------------------------- clients */

/* A histogram of microseconds: exact below 64, then 32 buckets an octave
 * (within about 3 %). */
#define HIST_BUCKETS 1300

typedef struct {
    uint64_t count[HIST_BUCKETS];
    uint64_t n, max;
} Hist;

static int hist_bucket(uint64_t us) {
    if (us < 64)
        return (int)us;
    int msb = 63 - __builtin_clzll(us);
    int shift = msb - 5;
    int b = 64 + (shift - 1) * 32 + (int)((us >> shift) - 32);
    return b < HIST_BUCKETS ? b : HIST_BUCKETS - 1;
}

/* The smallest value of bucket b, and the width of the bucket. */
static uint64_t hist_low(int b, uint64_t *width) {
    if (b < 64) {
        *width = 1;
        return (uint64_t)b;
    }
    int shift = (b - 64) / 32 + 1;
    *width = 1ull << shift;
    return (uint64_t)(32 + (b - 64) % 32) << shift;
}

static void hist_add(Hist *h, uint64_t ns) {
    uint64_t us = ns / 1000;
    h->count[hist_bucket(us)]++;
    h->n++;
    if (us > h->max)
        h->max = us;
}

/* The p-th percentile: the middle of the bucket the p-th value is in. */
static double hist_percentile(const Hist *h, double p) {
    if (!h->n)
        return 0;
    uint64_t rank = (uint64_t)(p / 100.0 * (double)h->n + 0.5);
    if (rank < 1)
        rank = 1;
    if (rank > h->n)
        rank = h->n;
    uint64_t seen = 0;
    for (int b = 0; b < HIST_BUCKETS; b++) {
        seen += h->count[b];
        if (seen >= rank) {
            uint64_t width, low = hist_low(b, &width);
            double mid = (double)low + (double)(width - 1) / 2.0;
            return mid > (double)h->max ? (double)h->max : mid;
        }
    }
    return (double)h->max;
}

/* {"n": .., "p50": .., "p99": .., "max": .., "buckets": [[low, width, count], ...]} */
static void print_hist(const char *name, const Hist *h) {
    printf("\"%s\": {\"n\": %llu, \"p50_us\": %.1f, \"p90_us\": %.1f, \"p99_us\": %.1f, "
           "\"p999_us\": %.1f, \"max_us\": %llu, \"buckets\": [",
           name, (unsigned long long)h->n, hist_percentile(h, 50), hist_percentile(h, 90),
           hist_percentile(h, 99), hist_percentile(h, 99.9), (unsigned long long)h->max);
    int first = 1;
    for (int b = 0; b < HIST_BUCKETS; b++) {
        if (!h->count[b])
            continue;
        uint64_t width, low = hist_low(b, &width);
        printf("%s[%llu, %llu, %llu]", first ? "" : ", ", (unsigned long long)low,
               (unsigned long long)width, (unsigned long long)h->count[b]);
        first = 0;
    }
    printf("]}");
}

/* What is counted, cumulatively; each report gives the growth since its mark. */
enum {
    K_ATTEMPTS,          /* connections tried */
    K_RETRIES,           /* of which after a failure */
    K_CONNECTED,         /* connect() completed */
    K_REGISTERED,        /* first REGISTER on a connection answered 200 */
    K_CONNECT_REFUSED,   /* connect() failed: ECONNREFUSED */
    K_CONNECT_RESET,     /* connect() failed: ECONNRESET */
    K_CONNECT_TIMEOUT,   /* connect() not done within --timeout */
    K_CONNECT_OTHER,     /* connect() failed otherwise (see last_errno) */
    K_REGISTER_TIMEOUT,  /* no answer to the first REGISTER within --timeout */
    K_REGISTER_CLOSED,   /* closed (FIN) before the first REGISTER was answered */
    K_REGISTER_RESET,    /* reset (or another error) before it was answered */
    K_REGISTER_REJECTED, /* answered, but not 2xx */
    K_LOST_CLOSED,       /* a registered connection closed by the other side */
    K_LOST_RESET,        /* a registered connection reset */
    K_LOST_TIMEOUT,      /* a registered connection's answer did not come */
    K_LOST_REJECTED,     /* a refresh or SUBSCRIBE answered, but not 2xx */
    K_SEND_FAILED,       /* a message could not be sent whole at once */
    K_BAD_INPUT,         /* unframeable or unexpected bytes from the pool */
    K_KEEPALIVES,        /* pings sent */
    K_PONGS,             /* pongs received */
    K_REFRESHES,         /* REGISTER refreshes answered 200 */
    K_SUBSCRIBES,        /* SUBSCRIBEs answered 200 (with a body) */
    K_STORM_CLOSED,      /* connections closed by a storm command */
    K_COUNT
};

static const char *counter_names[K_COUNT] = {
    "attempts",         "retries",           "connected",         "registered_events",
    "connect_refused",  "connect_reset",     "connect_timeout",   "connect_other",
    "register_timeout", "register_closed",   "register_reset",    "register_rejected",
    "lost_closed",      "lost_reset",        "lost_timeout",      "lost_rejected",
    "send_failed",      "bad_input",         "keepalives",        "pongs",
    "refreshes",        "subscribes",        "storm_closed",
};

enum { IDLE, QUEUED, BACKOFF, CONNECTING, REGISTERING, READY };
enum { NONE, WAIT_REGISTER, WAIT_PONG, WAIT_SUBSCRIBE };

typedef struct {
    int fd;
    uint8_t state, waiting, retrying;
    uint32_t cseq, attempt;
    uint16_t local_port;
    uint64_t deadline; /* of the connect or of the answer awaited */
    uint64_t sent_at;  /* when the request awaited was sent */
    uint64_t next_ping, next_refresh, next_subscribe, retry_at;
    int prev, next, slot; /* in the timer wheel: slot -1 when not in it */
    Bytes in;
} Client;

/* The timer wheel: a slot a millisecond, each a list of the clients whose
 * next deadline or due request falls in it (modulo the wheel's span). */
#define WHEEL 4096

static struct {
    struct sockaddr_in vip;
    int count, src_count;
    uint32_t src_first; /* host order */
    uint64_t first;     /* this process's first client number */
    double keepalive, refresh, subscribe, expires, timeout, retry;
    int inflight_max;
    Client *clients;
    int *queue; /* clients waiting to connect, a ring */
    int q_head, q_len;
    int inflight, registered;
    int epoll;
    uint64_t counters[K_COUNT];
    int last_errno;
    /* the phase under way: connect or storm */
    int phase; /* 0 none, 1 connect, 2 storm */
    uint64_t phase_start, phase_deadline, phase_mark[K_COUNT];
    double rate;
    uint64_t rate_start, rate_started; /* pacing: connections started since rate_start */
    Hist phase_register;
    /* the stats window */
    uint64_t window_start, window_mark[K_COUNT];
    int window_min;
    Hist ping, reg;
    int wheel[WHEEL], wheel_count[WHEEL];
    uint64_t wheel_done; /* the last millisecond whose slot was handled */
} C;

static uint64_t ms(uint64_t ns) { return ns / 1000000u; }

static void unlink_client(int i) {
    Client *c = &C.clients[i];
    if (c->slot < 0)
        return;
    if (c->prev >= 0)
        C.clients[c->prev].next = c->next;
    else
        C.wheel[c->slot] = c->next;
    if (c->next >= 0)
        C.clients[c->next].prev = c->prev;
    C.wheel_count[c->slot]--;
    c->slot = -1;
}

/* When client i must next be looked at: its deadline, or its next request. */
static uint64_t wake_time(const Client *c) {
    switch (c->state) {
    case BACKOFF:
        return c->retry_at;
    case CONNECTING:
    case REGISTERING:
        return c->deadline;
    case READY: {
        if (c->waiting != NONE)
            return c->deadline;
        uint64_t t = c->next_ping < c->next_refresh ? c->next_ping : c->next_refresh;
        return t < c->next_subscribe ? t : c->next_subscribe;
    }
    default:
        return UINT64_MAX;
    }
}

/* Put client i in the slot of its wake time (never one already handled). */
static void reschedule(int i) {
    Client *c = &C.clients[i];
    unlink_client(i);
    uint64_t t = wake_time(c);
    if (t == UINT64_MAX)
        return;
    uint64_t m = ms(t);
    if (m <= C.wheel_done)
        m = C.wheel_done + 1;
    int slot = (int)(m % WHEEL);
    c->slot = slot;
    c->prev = -1;
    c->next = C.wheel[slot];
    if (c->next >= 0)
        C.clients[c->next].prev = i;
    C.wheel[slot] = i;
    C.wheel_count[slot]++;
}

static void registration_lost(void) {
    C.registered--;
    if (C.registered < C.window_min)
        C.window_min = C.registered;
}

static uint32_t source_address(int i) {
    /* the (i % src_count)-th address from src_first, skipping .0 and .255 */
    uint32_t a = C.src_first;
    for (int k = i % C.src_count; k > 0;) {
        a++;
        if ((a & 0xff) != 0 && (a & 0xff) != 0xff)
            k--;
    }
    return a;
}

static uint32_t *sources; /* each client's source address, network order */

static void watch_client(int i, int op, uint32_t events) {
    struct epoll_event ev = {.events = events, .data.u64 = (uint64_t)i};
    if (epoll_ctl(C.epoll, op, C.clients[i].fd, &ev) < 0)
        die("epoll_ctl");
}

static void enqueue(int i) {
    unlink_client(i);
    C.clients[i].state = QUEUED;
    C.queue[(C.q_head + C.q_len) % C.count] = i;
    C.q_len++;
}

/* Close client i's connection, if any; count ``why``; try again later. */
static void fail(int i, int why, uint64_t now) {
    Client *c = &C.clients[i];
    C.counters[why]++;
    if (c->state == CONNECTING || c->state == REGISTERING)
        C.inflight--;
    if (c->state == READY)
        registration_lost();
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    bytes_free(&c->in);
    c->waiting = NONE;
    c->state = BACKOFF;
    c->retrying = 1;
    c->retry_at = now + seconds_ns(C.retry * uniform(0.5, 1.5));
    reschedule(i);
}

static void start_connect(int i, uint64_t now) {
    Client *c = &C.clients[i];
    C.counters[K_ATTEMPTS]++;
    if (c->retrying)
        C.counters[K_RETRIES]++;
    c->attempt++;
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        C.last_errno = errno;
        c->state = BACKOFF; /* not in flight */
        fail(i, K_CONNECT_OTHER, now);
        return;
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(c->fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
    struct sockaddr_in src = {.sin_family = AF_INET, .sin_addr.s_addr = sources[i]};
    c->state = CONNECTING;
    C.inflight++;
    c->deadline = now + seconds_ns(C.timeout);
    if (bind(c->fd, (struct sockaddr *)&src, sizeof src) < 0) {
        C.last_errno = errno;
        fail(i, K_CONNECT_OTHER, now);
        return;
    }
    if (connect(c->fd, (struct sockaddr *)&C.vip, sizeof C.vip) < 0 && errno != EINPROGRESS) {
        C.last_errno = errno;
        fail(i, errno == ECONNREFUSED ? K_CONNECT_REFUSED : K_CONNECT_OTHER, now);
        return;
    }
    watch_client(i, EPOLL_CTL_ADD, EPOLLOUT);
    reschedule(i);
}

static char message[8192];

static char *source_text(int i) {
    static char text[INET_ADDRSTRLEN];
    struct in_addr a = {.s_addr = sources[i]};
    inet_ntop(AF_INET, &a, text, sizeof text);
    return text;
}

/* Client i's common headers of a request. */
static int request_start(int i, const char *method, const char *uri, const char *call) {
    Client *c = &C.clients[i];
    uint64_t n = C.first + (uint64_t)i;
    c->cseq++;
    return snprintf(
        message, sizeof message,
        "%s %s SIP/2.0\r\n"
        "Via: SIP/2.0/TCP %s:%u;branch=z9hG4bK%08llx%08x\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:user%06llu@contoso.com>;tag=%08llx%04x;epid=%010llx\r\n"
        "To: <sip:user%06llu@contoso.com>\r\n"
        "Call-ID: %s%016llx%08x\r\n"
        "CSeq: %u %s\r\n"
        "Contact: <sip:%s:%u;transport=tcp;ms-opaque=d3470f2e1d>;methods=\"INVITE, "
        "MESSAGE, INFO, OPTIONS, BYE, CANCEL, NOTIFY, ACK, REFER, BENOTIFY\";"
        "proxy=replace;+sip.instance=\"<urn:uuid:D1C3A8E0-4A36-5D36-9A4F-%012llX>\"\r\n"
        "User-Agent: UCCAPI/3.5.6907.0 OC/3.5.6907.0 (Microsoft Office Communicator 2007 "
        "R2)\r\n",
        method, uri, source_text(i), c->local_port,
        (unsigned long long)(n * 2654435761u & 0xffffffffu), c->cseq, (unsigned long long)n,
        (unsigned long long)(n * 40503u & 0xffffffffu), c->attempt & 0xffff,
        (unsigned long long)(n * 97u), (unsigned long long)n, call,
        (unsigned long long)(n * 0x9E3779B97F4A7C15ull), c->attempt, c->cseq, method,
        source_text(i), c->local_port, (unsigned long long)n);
}

static int send_message(int i, size_t len, uint64_t now) {
    Client *c = &C.clients[i];
    ssize_t sent = send(c->fd, message, len, MSG_NOSIGNAL);
    if (sent != (ssize_t)len) { /* one message fits any socket buffer */
        if (sent < 0)
            C.last_errno = errno;
        fail(i, sent < 0 && errno == ECONNRESET ? K_LOST_RESET : K_SEND_FAILED, now);
        return -1;
    }
    c->sent_at = now_ns(); /* not the tick's time: what it took to get here is not the pool's */
    c->deadline = now + seconds_ns(C.timeout);
    return 0;
}

static void send_register(int i, uint64_t now) {
    Client *c = &C.clients[i];
    int len = request_start(i, "REGISTER", "sip:contoso.com", "");
    len += snprintf(message + len, sizeof message - (size_t)len,
                    "Supported: gruu-10, adhoclist, msrtc-event-categories\r\n"
                    "Supported: ms-forking\r\n"
                    "ms-keep-alive: UAC;hop-hop=yes\r\n"
                    "Event: registration\r\n"
                    "Proxy-Authorization: Kerberos qop=\"auth\", realm=\"SIP Communications "
                    "Service\", opaque=\"8F7AD3C4\", crand=\"%08x\", cnum=\"%u\", "
                    "targetname=\"sip/ocspool.contoso.com\", "
                    "response=\"0123456789abcdef0123456789abcdef%08x\"\r\n"
                    "Expires: %.0f\r\n"
                    "Content-Length: 0\r\n\r\n",
                    (unsigned)(rng() & 0xffffffffu), c->cseq, c->cseq, C.expires);
    if (send_message(i, (size_t)len, now) == 0)
        c->waiting = WAIT_REGISTER;
}

static void send_subscribe(int i, uint64_t now) {
    char uri[64];
    snprintf(uri, sizeof uri, "sip:user%06llu@contoso.com", (unsigned long long)(C.first + i));
    int len = request_start(i, "SUBSCRIBE", uri, "sub-");
    len += snprintf(message + len, sizeof message - (size_t)len,
                    "Event: vnd-microsoft-roaming-contacts\r\n"
                    "Accept: application/vnd-microsoft-roaming-contacts+xml\r\n"
                    "Supported: com.microsoft.autoextend, ms-benotify, "
                    "ms-piggyback-first-notify\r\n"
                    "Expires: 28800\r\n"
                    "Content-Length: 0\r\n\r\n");
    if (send_message(i, (size_t)len, now) == 0)
        C.clients[i].waiting = WAIT_SUBSCRIBE;
}

static void send_ping(int i, uint64_t now) {
    memcpy(message, "\r\n\r\n", 4);
    if (send_message(i, 4, now) == 0) {
        C.clients[i].waiting = WAIT_PONG;
        C.counters[K_KEEPALIVES]++;
    }
}

/* Once connect() is done. */
static void connected(int i, uint64_t now) {
    Client *c = &C.clients[i];
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err) {
        C.last_errno = err;
        fail(i,
             err == ECONNREFUSED  ? K_CONNECT_REFUSED
             : err == ECONNRESET  ? K_CONNECT_RESET
             : err == ETIMEDOUT   ? K_CONNECT_TIMEOUT
                                  : K_CONNECT_OTHER,
             now);
        return;
    }
    struct sockaddr_in local;
    socklen_t size = sizeof local;
    getsockname(c->fd, (struct sockaddr *)&local, &size);
    c->local_port = ntohs(local.sin_port);
    C.counters[K_CONNECTED]++;
    c->state = REGISTERING;
    watch_client(i, EPOLL_CTL_MOD, EPOLLIN | EPOLLRDHUP);
    send_register(i, now);
}

/* A 200 to what client i waited for (its header block head[0:n]). */
static void answered(int i, const char *head, size_t n, uint64_t now) {
    Client *c = &C.clients[i];
    int ok = n > 9 && memcmp(head, "SIP/2.0 2", 9) == 0;
    if (n > 9 && memcmp(head, "SIP/2.0 1", 9) == 0)
        return; /* provisional: wait on */
    int waited = c->waiting;
    c->waiting = NONE;
    if (waited == WAIT_REGISTER && c->state == REGISTERING) {
        if (!ok) {
            fail(i, K_REGISTER_REJECTED, now);
            return;
        }
        C.inflight--;
        c->state = READY;
        C.registered++;
        C.counters[K_REGISTERED]++;
        hist_add(&C.reg, now - c->sent_at);
        if (C.phase)
            hist_add(&C.phase_register, now - c->sent_at);
        c->retrying = 0;
        c->next_ping = now + seconds_ns(uniform(0.0, C.keepalive));
        c->next_refresh = now + seconds_ns(uniform(0.0, C.refresh));
        c->next_subscribe =
            C.subscribe > 0 ? now + seconds_ns(uniform(0.0, 2 * C.subscribe)) : UINT64_MAX;
        return;
    }
    if (!ok) {
        fail(i, K_LOST_REJECTED, now);
        return;
    }
    if (waited == WAIT_REGISTER) {
        C.counters[K_REFRESHES]++;
        c->next_refresh = now + seconds_ns(C.refresh);
    } else if (waited == WAIT_SUBSCRIBE) {
        C.counters[K_SUBSCRIBES]++;
        c->next_subscribe = now + seconds_ns(C.subscribe * uniform(0.5, 1.5));
    }
}

/* Handle the whole messages in data[0:n]; how much was used, -1 on bad input. */
static long client_messages(int i, const char *data, size_t n, uint64_t now) {
    Client *c = &C.clients[i];
    size_t at = 0;
    while (at < n && c->state >= REGISTERING) {
        if (data[at] == '\r') {
            if (n - at < 2)
                break;
            if (data[at + 1] != '\n' || c->waiting != WAIT_PONG)
                return -1;
            at += 2;
            c->waiting = NONE;
            C.counters[K_PONGS]++;
            hist_add(&C.ping, now - c->sent_at);
            c->next_ping = now + seconds_ns(C.keepalive);
            continue;
        }
        size_t total;
        long head = frame(data + at, n - at, &total);
        if (head < 0)
            return -1;
        if (head == 0)
            break;
        if (memcmp(data + at, "SIP/2.0 ", 8) != 0 || c->waiting == NONE ||
            c->waiting == WAIT_PONG)
            return -1; /* nothing here sends a request to a client */
        answered(i, data + at, (size_t)head, now);
        at += total;
    }
    return (long)at;
}

static void client_readable(int i) {
    Client *c = &C.clients[i];
    for (;;) {
        ssize_t got = recv(c->fd, read_buffer, sizeof read_buffer, 0);
        uint64_t now = now_ns(); /* when this answer was read, not when the batch began */
        if (got < 0 && errno == EAGAIN)
            return;
        if (got <= 0) {
            int registering = c->state == REGISTERING;
            if (got < 0)
                C.last_errno = errno;
            if (got == 0)
                fail(i, registering ? K_REGISTER_CLOSED : K_LOST_CLOSED, now);
            else
                fail(i, registering ? K_REGISTER_RESET : K_LOST_RESET, now);
            return;
        }
        const char *data = read_buffer;
        size_t n = (size_t)got;
        if (c->in.size) {
            bytes_add(&c->in, read_buffer, n);
            data = c->in.data;
            n = c->in.size;
        }
        long used = client_messages(i, data, n, now);
        if (used < 0) {
            fail(i, K_BAD_INPUT, now);
            return;
        }
        if (c->state < REGISTERING)
            return; /* failed meanwhile */
        bytes_keep(&c->in, data, n, (size_t)used);
        if ((size_t)got < sizeof read_buffer)
            return;
    }
}

/* Client i's deadline or request is due (or it is not yet: it is looked at
 * every WHEEL ms until it is). */
static void due(int i, uint64_t now) {
    Client *c = &C.clients[i];
    if (wake_time(c) > now)
        return;
    switch (c->state) {
    case BACKOFF:
        enqueue(i);
        return;
    case CONNECTING:
        fail(i, K_CONNECT_TIMEOUT, now);
        return;
    case REGISTERING:
        fail(i, K_REGISTER_TIMEOUT, now);
        return;
    case READY:
        if (c->waiting != NONE)
            fail(i, K_LOST_TIMEOUT, now);
        else if (now >= c->next_refresh)
            send_register(i, now);
        else if (now >= c->next_subscribe)
            send_subscribe(i, now);
        else
            send_ping(i, now);
        return;
    }
}

/* Handle the wheel's slots up to now. */
static void run_wheel(uint64_t now) {
    uint64_t until = ms(now);
    if (until - C.wheel_done > WHEEL) /* a long stall: every slot once */
        C.wheel_done = until - WHEEL;
    while (C.wheel_done < until) {
        C.wheel_done++;
        int slot = (int)(C.wheel_done % WHEEL);
        for (int i = C.wheel[slot]; i >= 0;) {
            int next = C.clients[i].next;
            due(i, now);
            reschedule(i); /* to the slot of what it waits for next, if anything */
            i = next;
        }
    }
}

/* Milliseconds until the wheel next has something, at most ``most``. */
static int wheel_sleep(uint64_t now, int most) {
    uint64_t m = ms(now);
    for (int k = 0; k < most; k++) {
        uint64_t at = C.wheel_done + 1 + (uint64_t)k;
        if (C.wheel_count[at % WHEEL])
            return at > m ? (int)(at - m) : 0;
    }
    return most;
}

/* Start new connections: within --inflight, and at the rate asked.  When the
 * next may start, in ms (-1: not for want of a token). */
static int start_connections(uint64_t now) {
    uint64_t allowed = UINT64_MAX;
    if (C.rate > 0) {
        double tokens = (double)(now - C.rate_start) / 1e9 * C.rate + 1;
        allowed = (uint64_t)tokens > C.rate_started ? (uint64_t)tokens - C.rate_started : 0;
    }
    while (C.q_len && C.inflight < C.inflight_max && allowed) {
        int i = C.queue[C.q_head];
        C.q_head = (C.q_head + 1) % C.count;
        C.q_len--;
        start_connect(i, now);
        C.rate_started++;
        allowed--;
    }
    if (!C.q_len) {
        /* nothing waits: the bucket does not fill up for later retries */
        C.rate_start = now;
        C.rate_started = 0;
        return -1;
    }
    if (C.rate > 0 && !allowed && C.inflight < C.inflight_max)
        return (int)(1000.0 / C.rate) + 1 > 1 ? (int)(1000.0 / C.rate) : 1;
    return -1;
}

static void print_counters(const uint64_t *mark) {
    printf("\"counts\": {");
    for (int k = 0; k < K_COUNT; k++)
        printf("%s\"%s\": %llu", k ? ", " : "", counter_names[k],
               (unsigned long long)(C.counters[k] - mark[k]));
    printf("}");
}

static void end_phase(uint64_t now) {
    printf("{\"event\": \"%s\", \"clients\": %d, \"registered\": %d, \"complete\": %s, "
           "\"seconds\": %.3f, \"inflight\": %d, \"queued\": %d, \"last_errno\": \"%s\", ",
           C.phase == 1 ? "connect" : "storm", C.count, C.registered,
           C.registered == C.count ? "true" : "false", (double)(now - C.phase_start) / 1e9,
           C.inflight, C.q_len, C.last_errno ? strerror(C.last_errno) : "");
    print_counters(C.phase_mark);
    printf(", ");
    print_hist("register", &C.phase_register);
    printf("}\n");
    fflush(stdout);
    C.phase = 0;
    C.rate = 0;
}

static void begin_phase(int phase, double rate, double timeout, uint64_t now) {
    if (C.phase) /* one at a time: the one under way ends here */
        end_phase(now);
    C.phase = phase;
    C.phase_start = now;
    C.phase_deadline = now + seconds_ns(timeout);
    memcpy(C.phase_mark, C.counters, sizeof C.counters);
    memset(&C.phase_register, 0, sizeof C.phase_register);
    C.rate = rate;
    C.rate_start = now;
    C.rate_started = 0;
    /* a new window too: the storm's or the ramp's failures are not steady state's */
    memcpy(C.window_mark, C.counters, sizeof C.counters);
    C.window_start = now;
    C.window_min = C.registered;
    memset(&C.ping, 0, sizeof C.ping);
    memset(&C.reg, 0, sizeof C.reg);
}

static void print_stats(uint64_t now) {
    printf("{\"event\": \"stats\", \"clients\": %d, \"registered\": %d, "
           "\"registered_min\": %d, \"seconds\": %.3f, \"inflight\": %d, \"queued\": %d, "
           "\"last_errno\": \"%s\", ",
           C.count, C.registered, C.window_min, (double)(now - C.window_start) / 1e9,
           C.inflight, C.q_len, C.last_errno ? strerror(C.last_errno) : "");
    print_counters(C.window_mark);
    printf(", ");
    print_hist("keepalive", &C.ping);
    printf(", ");
    print_hist("register", &C.reg);
    printf("}\n");
    fflush(stdout);
    memcpy(C.window_mark, C.counters, sizeof C.counters);
    C.window_start = now;
    C.window_min = C.registered;
    memset(&C.ping, 0, sizeof C.ping);
    memset(&C.reg, 0, sizeof C.reg);
}

static void storm(void) {
    for (int i = 0; i < C.count; i++) {
        Client *c = &C.clients[i];
        if (c->state == QUEUED)
            continue;
        if (c->fd >= 0) {
            close(c->fd);
            C.counters[K_STORM_CLOSED]++;
        }
        if (c->state == CONNECTING || c->state == REGISTERING)
            C.inflight--;
        if (c->state == READY)
            registration_lost();
        c->fd = -1;
        bytes_free(&c->in);
        c->waiting = NONE;
        c->retrying = 0;
        enqueue(i);
    }
}

/* One command line; 1 to quit. */
static int command(char *line, uint64_t now) {
    char word[16] = "";
    double a = 0, b = 0;
    int n = sscanf(line, "%15s %lf %lf", word, &a, &b);
    if (n >= 1 && strcmp(word, "quit") == 0)
        return 1;
    if (n == 3 && strcmp(word, "connect") == 0) {
        begin_phase(1, a, b, now);
        for (int i = 0; i < C.count; i++)
            if (C.clients[i].state == IDLE)
                enqueue(i);
        return 0;
    }
    if (n == 2 && strcmp(word, "storm") == 0) {
        begin_phase(2, 0, a, now);
        storm();
        return 0;
    }
    if (n == 1 && strcmp(word, "stats") == 0) {
        print_stats(now);
        return 0;
    }
    printf("{\"event\": \"error\", \"error\": \"unknown command\"}\n");
    fflush(stdout);
    return 0;
}

static double option(int argc, char **argv, const char *name, double fallback) {
    for (int k = 7; k + 1 < argc; k += 2)
        if (strcmp(argv[k], name) == 0)
            return atof(argv[k + 1]);
    return fallback;
}

static int clients(int argc, char **argv) {
    if (argc < 7 || (argc - 7) % 2) {
        fprintf(stderr, "usage: ocsim clients VIP PORT N SRC_FIRST SRC_COUNT [OPTION VALUE]...\n");
        return 2;
    }
    static const char *known[] = {"--keepalive", "--refresh", "--subscribe", "--expires",
                                  "--timeout",   "--retry",   "--inflight",  "--first",
                                  "--seed",      NULL};
    for (int k = 7; k < argc; k += 2) {
        int ok = 0;
        for (int j = 0; known[j]; j++)
            ok |= strcmp(argv[k], known[j]) == 0;
        if (!ok) {
            fprintf(stderr, "ocsim clients: unknown option %s\n", argv[k]);
            return 2;
        }
    }
    C.vip = address(argv[2], atoi(argv[3]));
    C.count = atoi(argv[4]);
    struct sockaddr_in first = address(argv[5], 0);
    C.src_first = ntohl(first.sin_addr.s_addr);
    C.src_count = atoi(argv[6]);
    C.keepalive = option(argc, argv, "--keepalive", 30);
    C.refresh = option(argc, argv, "--refresh", 1800);
    C.subscribe = option(argc, argv, "--subscribe", 600);
    C.expires = option(argc, argv, "--expires", 3600);
    C.timeout = option(argc, argv, "--timeout", 10);
    C.retry = option(argc, argv, "--retry", 1);
    C.inflight_max = (int)option(argc, argv, "--inflight", 2000);
    C.first = (uint64_t)option(argc, argv, "--first", 0);
    rng_state ^= (uint64_t)option(argc, argv, "--seed", 1) * 0x9E3779B97F4A7C15ull + C.first;
    if (C.count < 1 || C.src_count < 1 || C.keepalive <= 0 || C.refresh <= 0 ||
        C.timeout <= 0 || C.inflight_max < 1) {
        fprintf(stderr, "ocsim clients: N, SRC_COUNT, --keepalive, --refresh, --timeout and "
                        "--inflight must be positive\n");
        return 2;
    }
    rlim_t limit = raise_nofile();
    if ((rlim_t)C.count + 16 > limit) {
        fprintf(stderr, "ocsim clients: %d connections need more than the %llu files allowed\n",
                C.count, (unsigned long long)limit);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    C.clients = calloc((size_t)C.count, sizeof *C.clients);
    C.queue = calloc((size_t)C.count, sizeof *C.queue);
    sources = calloc((size_t)C.count, sizeof *sources);
    for (int i = 0; i < C.count; i++) {
        C.clients[i].fd = -1;
        C.clients[i].slot = -1;
        sources[i] = htonl(source_address(i));
    }
    for (int k = 0; k < WHEEL; k++)
        C.wheel[k] = -1;
    C.epoll = epoll_create1(EPOLL_CLOEXEC);
    fcntl(0, F_SETFL, fcntl(0, F_GETFL) | O_NONBLOCK);
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = UINT64_MAX};
    if (epoll_ctl(C.epoll, EPOLL_CTL_ADD, 0, &ev) < 0)
        die("epoll_ctl stdin");
    printf("{\"event\": \"ready\", \"clients\": %d}\n", C.count);
    fflush(stdout);
    char line[256];
    size_t line_len = 0;
    struct epoll_event events[EVENTS];
    C.wheel_done = ms(now_ns());
    for (;;) {
        uint64_t now = now_ns();
        run_wheel(now);
        int token = start_connections(now);
        if (C.phase && (C.registered == C.count || now >= C.phase_deadline))
            end_phase(now);
        int timeout = wheel_sleep(now, 50);
        if (token >= 0 && token < timeout)
            timeout = token;
        int n = epoll_wait(C.epoll, events, EVENTS, timeout);
        if (n < 0 && errno != EINTR)
            die("epoll_wait");
        now = now_ns();
        for (int e = 0; e < n; e++) {
            uint64_t id = events[e].data.u64;
            if (id == UINT64_MAX) {
                for (;;) {
                    ssize_t got = read(0, line + line_len, sizeof line - 1 - line_len);
                    if (got < 0 && errno == EAGAIN)
                        break;
                    if (got <= 0)
                        return 0; /* the end of stdin: quit */
                    line_len += (size_t)got;
                    char *nl;
                    while ((nl = memchr(line, '\n', line_len))) {
                        *nl = 0;
                        if (command(line, now))
                            return 0;
                        line_len -= (size_t)(nl + 1 - line);
                        memmove(line, nl + 1, line_len);
                    }
                    if (line_len == sizeof line - 1)
                        line_len = 0; /* a line too long: dropped */
                }
                continue;
            }
            int i = (int)id;
            Client *c = &C.clients[i];
            if (c->state == CONNECTING)
                connected(i, now);
            else if (c->state >= REGISTERING)
                client_readable(i);
            reschedule(i);
        }
    }
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "serve") == 0)
        return serve(argc, argv);
    if (argc > 1 && strcmp(argv[1], "clients") == 0)
        return clients(argc, argv);
    fprintf(stderr, "usage: ocsim serve ... | ocsim clients ...\n");
    return 2;
}
