/*
 * A measuring aid, not a fix to deploy: an LD_PRELOAD shim that sets TCP_NODELAY on every socket
 * a process connects. Redis 7.0 does not set it on the cluster-bus links a node opens to its
 * peers, so a PUBLISH forwarded over the bus can wait for a delayed ACK (up to 40 ms on Linux).
 * Starting the cluster's servers with this shim shows how much of the cross-node delivery time
 * that accounts for (docs/redis-cluster-fanout.md, "Latency across nodes").
 *
 *   gcc -shared -fPIC -O2 -o /tmp/nodelay.so docs/tools/cluster-bus-nodelay.c -ldl
 *   LD_PRELOAD=/tmp/nodelay.so .ci/redis-cluster start 7201 /tmp/electric-dev-cluster-nd
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
int connect(int fd, const struct sockaddr *addr, socklen_t len) {
    static int (*real)(int, const struct sockaddr *, socklen_t);
    if (!real) real = dlsym(RTLD_NEXT, "connect");
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return real(fd, addr, len);
}
