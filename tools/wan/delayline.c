/* The emulated link's delay stage: packets read from a TUN device come out of the same device DELAY_US later,
 * in the order they came in. One TUN device per direction; the router namespace routes each direction's
 * packets into its device (tools/wan/link.py), and tbf after this stage limits the rate.
 *
 *   delayline TUN_UP TUN_DOWN DELAY_US LOSS_PPM
 *
 * DELAY_US is the one-way delay (half the round trip), the same both ways. LOSS_PPM drops each packet, either
 * way, with that probability per million (random loss on the path, as opposed to the drops at tbf's buffer).
 * Each direction is a FIFO of fixed-size slots; a packet that finds it full is dropped and counted. A constant
 * delay keeps order and never reorders, so the kernel's TCP at both ends sees a plain long pipe.
 * SIGTERM/SIGINT: counts to stderr, exit 0.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

enum { SLOTS = 1 << 14, MTU_MAX = 2048 };

typedef struct {
    const char *dev;
    int fd;
    unsigned first, count;            /* the queue: slots [first, first + count) mod SLOTS */
    int64_t release_at[SLOTS];        /* ns, CLOCK_MONOTONIC */
    uint16_t size[SLOTS];
    unsigned char data[SLOTS][MTU_MAX];
    uint64_t passed, overflow, lost, oversize;
    int64_t worst_late;
} queue_t;

static volatile sig_atomic_t quit;
static uint64_t rng = 0x9E3779B97F4A7C15ULL;
static uint32_t loss_ppm;
static int64_t delay_ns;

static void on_quit(int sig) { (void)sig; quit = 1; }

static int64_t clock_ns(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return now.tv_sec * 1000000000LL + now.tv_nsec;
}

static uint32_t next_random(void) { /* xorshift64*: enough for a loss coin */
    rng ^= rng >> 12; rng ^= rng << 25; rng ^= rng >> 27;
    return (uint32_t)((rng * 0x2545F4914F6CDD1DULL) >> 32);
}

static int open_tun(const char *dev) {
    int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) { perror("delayline: /dev/net/tun"); exit(1); }
    struct ifreq req = {0};
    req.ifr_flags = IFF_TUN | IFF_NO_PI;
    snprintf(req.ifr_name, IFNAMSIZ, "%s", dev);
    if (ioctl(fd, TUNSETIFF, &req) < 0) { fprintf(stderr, "delayline: attach %s: %s\n", dev, strerror(errno)); exit(1); }
    return fd;
}

/* Take every packet waiting in the device into the queue, stamped with its release time. */
static void take_in(queue_t *q, int64_t now) {
    unsigned char spill[MTU_MAX];
    for (;;) {
        int full = q->count == SLOTS;
        unsigned slot = (q->first + q->count) % SLOTS;
        unsigned char *into = full ? spill : q->data[slot];
        ssize_t got = read(q->fd, into, MTU_MAX);
        if (got < 0) {
            if (errno == EAGAIN || errno == EINTR) return;
            fprintf(stderr, "delayline: read %s: %s\n", q->dev, strerror(errno));
            exit(1);
        }
        if (got == 0) return;
        if (full) { q->overflow++; continue; }
        if (got >= MTU_MAX) { q->oversize++; continue; }  /* the link's MTU is 1500: never a cut packet */
        if (loss_ppm && next_random() % 1000000u < loss_ppm) { q->lost++; continue; }
        q->size[slot] = (uint16_t)got;
        q->release_at[slot] = now + delay_ns;
        q->count++;
    }
}

/* Write back every packet whose time has come. */
static void let_out(queue_t *q, int64_t now) {
    while (q->count && q->release_at[q->first] <= now) {
        unsigned slot = q->first;
        if (write(q->fd, q->data[slot], q->size[slot]) < 0 && errno == EAGAIN) return; /* next wake */
        int64_t late = now - q->release_at[slot];
        if (late > q->worst_late) q->worst_late = late;
        q->passed++;
        q->first = (q->first + 1) % SLOTS;
        q->count--;
    }
}

static int64_t next_release(const queue_t *q) { return q->count ? q->release_at[q->first] : INT64_MAX; }

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: delayline TUN_UP TUN_DOWN DELAY_US LOSS_PPM\n");
        return 2;
    }
    static queue_t lines[2];
    lines[0].dev = argv[1];
    lines[1].dev = argv[2];
    delay_ns = atoll(argv[3]) * 1000LL;
    loss_ppm = (uint32_t)strtoul(argv[4], NULL, 10);
    rng ^= (uint64_t)clock_ns() * 2654435761u;
    for (int i = 0; i < 2; i++) lines[i].fd = open_tun(lines[i].dev);
    struct sigaction sa = {0};
    sa.sa_handler = on_quit;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    struct pollfd watch[2] = {{lines[0].fd, POLLIN, 0}, {lines[1].fd, POLLIN, 0}};
    fprintf(stderr, "delayline: %s/%s, %lld us each way, loss %u ppm\n", argv[1], argv[2],
            (long long)(delay_ns / 1000), loss_ppm);
    while (!quit) {
        int64_t now = clock_ns();
        int64_t wake = next_release(&lines[0]);
        if (next_release(&lines[1]) < wake) wake = next_release(&lines[1]);
        struct timespec pause, *timeout = NULL;
        if (wake != INT64_MAX) {
            int64_t left = wake > now ? wake - now : 0;
            pause.tv_sec = left / 1000000000LL;
            pause.tv_nsec = left % 1000000000LL;
            timeout = &pause;
        }
        int ready = ppoll(watch, 2, timeout, NULL);
        if (ready < 0 && errno != EINTR) { perror("delayline: ppoll"); return 1; }
        now = clock_ns();
        for (int i = 0; i < 2; i++) {
            if (ready > 0 && (watch[i].revents & POLLIN)) take_in(&lines[i], now);
            let_out(&lines[i], now);
        }
    }
    for (int i = 0; i < 2; i++)
        fprintf(stderr, "delayline %s: %llu passed, %llu lost at random, %llu dropped (queue full), %llu oversize, "
                        "worst lateness %.3f ms, %u held at exit\n", lines[i].dev,
                (unsigned long long)lines[i].passed, (unsigned long long)lines[i].lost,
                (unsigned long long)lines[i].overflow, (unsigned long long)lines[i].oversize,
                lines[i].worst_late / 1e6, lines[i].count);
    return 0;
}
