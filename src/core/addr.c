/*
 * px_addr: a socket address in a platform-neutral box.  Its storage is
 * read and written with memcpy: it is a uint64_t array, and casting it to
 * a sockaddr would break strict aliasing.
 */
#ifdef _WIN32
#include <winsock2.h>
#include <ws2tcpip.h>
#else
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#endif
#include <string.h>

#include "internal.h"

_Static_assert(sizeof(struct sockaddr_in6) <= sizeof(((px_addr *)0)->storage),
               "px_addr holds an IPv6 address");

int px__addr_family(const px_addr *addr) {
  struct sockaddr_storage ss;
  memcpy(&ss, addr->storage, sizeof(struct sockaddr_in6));
  return ss.ss_family;
}

int px_addr_set(px_addr *addr, const char *ip, int port) {
  if (addr == NULL || ip == NULL || port < 0 || port > 65535)
    return PX_EINVAL;
  int r = px__os_net_init();
  if (r < 0)
    return r;
  memset(addr, 0, sizeof(*addr));
  struct sockaddr_in a4 = {.sin_family = AF_INET,
                           .sin_port = htons((uint16_t)port)};
  struct sockaddr_in6 a6 = {.sin6_family = AF_INET6,
                            .sin6_port = htons((uint16_t)port)};
  if (inet_pton(AF_INET, ip, &a4.sin_addr) == 1) {
    memcpy(addr->storage, &a4, sizeof(a4));
    addr->len = sizeof(a4);
    return 0;
  }
  if (inet_pton(AF_INET6, ip, &a6.sin6_addr) == 1) {
    memcpy(addr->storage, &a6, sizeof(a6));
    addr->len = sizeof(a6);
    return 0;
  }
  return PX_EINVAL;
}

int px_addr_port(const px_addr *addr) {
  if (addr == NULL || addr->len == 0)
    return PX_EINVAL;
  struct sockaddr_in a4;
  struct sockaddr_in6 a6;
  switch (px__addr_family(addr)) {
    case AF_INET:
      memcpy(&a4, addr->storage, sizeof(a4));
      return ntohs(a4.sin_port);
    case AF_INET6:
      memcpy(&a6, addr->storage, sizeof(a6));
      return ntohs(a6.sin6_port);
    default:
      return PX_EAFNOSUPPORT;
  }
}
