/* Preloaded (LD_PRELOAD) into every process the tests start: a connection, datagram or
 * name lookup that would leave 127.0.0.0/8 or ::1 is refused and written to the file
 * named by KMDAGSTER_NETWORK_LOG, which the test run reads after each test
 * (network_guard.py). It sits under every client alike: botocore, libpq, HTTP, browsers.
 * Connecting a UDP socket sends nothing (programs do it to learn a route), so it is
 * refused without a record: nothing can be sent on that socket afterwards. Statically
 * linked programs (SeaweedFS's Go binary) do not load it. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void record(const char *what, const char *where) {
    const char *path = getenv("KMDAGSTER_NETWORK_LOG");
    if (path == NULL) return;
    char exe[256] = "?";
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) exe[n] = '\0';
    char line[768];
    int len = snprintf(line, sizeof line, "%s %s (pid %d, %s)\n", what, where, getpid(), exe);
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT, 0666);
    if (fd < 0) return;
    if (write(fd, line, (size_t)len) < 0) { /* nothing more to do */ }
    close(fd);
}

/* 1 for loopback and for families that never leave the machine (unix, netlink, ...). */
static int stays_local(const struct sockaddr *addr, char *where, size_t size) {
    char host[INET6_ADDRSTRLEN] = "";
    if (addr->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)addr;
        if ((ntohl(in->sin_addr.s_addr) >> 24) == 127) return 1;
        inet_ntop(AF_INET, &in->sin_addr, host, sizeof host);
        snprintf(where, size, "%s:%d", host, ntohs(in->sin_port));
        return 0;
    }
    if (addr->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)addr;
        if (IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr)) return 1;
        if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr) && in6->sin6_addr.s6_addr[12] == 127) return 1;
        inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof host);
        snprintf(where, size, "[%s]:%d", host, ntohs(in6->sin6_port));
        return 0;
    }
    return 1;
}

int connect(int fd, const struct sockaddr *addr, socklen_t len) {
    static int (*real)(int, const struct sockaddr *, socklen_t);
    if (real == NULL) real = (int (*)(int, const struct sockaddr *, socklen_t))dlsym(RTLD_NEXT, "connect");
    char where[96];
    if (addr != NULL && !stays_local(addr, where, sizeof where)) {
        int type = 0;
        socklen_t size = sizeof type;
        if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &size) != 0 || type != SOCK_DGRAM)
            record("connect to", where);
        errno = ENETUNREACH;
        return -1;
    }
    return real(fd, addr, len);
}

ssize_t sendto(int fd, const void *buf, size_t n, int flags, const struct sockaddr *addr,
               socklen_t len) {
    static ssize_t (*real)(int, const void *, size_t, int, const struct sockaddr *, socklen_t);
    if (real == NULL)
        real = (ssize_t (*)(int, const void *, size_t, int, const struct sockaddr *,
                            socklen_t))dlsym(RTLD_NEXT, "sendto");
    char where[96];
    if (addr != NULL && !stays_local(addr, where, sizeof where)) {
        record("datagram to", where);
        errno = ENETUNREACH;
        return -1;
    }
    return real(fd, buf, n, flags, addr, len);
}

/* A name that only DNS can answer is a first step outside; numeric addresses are judged
 * when they are connected to. */
static int is_local_name(const char *node) {
    if (node == NULL || strcmp(node, "localhost") == 0) return 1;
    unsigned char address[sizeof(struct in6_addr)];
    if (inet_pton(AF_INET, node, address) == 1 || inet_pton(AF_INET6, node, address) == 1)
        return 1;
    char self[256];
    return gethostname(self, sizeof self) == 0 && strcmp(node, self) == 0;
}

int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
                struct addrinfo **res) {
    static int (*real)(const char *, const char *, const struct addrinfo *, struct addrinfo **);
    if (real == NULL)
        real = (int (*)(const char *, const char *, const struct addrinfo *,
                        struct addrinfo **))dlsym(RTLD_NEXT, "getaddrinfo");
    if (!is_local_name(node)) {
        record("name lookup of", node);
        return EAI_NONAME;
    }
    return real(node, service, hints, res);
}
