/*
 * Handle helpers on Windows: sockets, pipes and files the loop knows.
 *
 * Everything is created for overlapped I/O (WSA_FLAG_OVERLAPPED,
 * FILE_FLAG_OVERLAPPED) and handed to the backend's adopt(), which ties it
 * to the loop's completion port.  A px_fd is the SOCKET or HANDLE value.
 * Pipes are a named-pipe pair (anonymous pipes cannot do overlapped I/O).
 * SIGPIPE does not exist: the guard is empty.
 */
#include <windows.h>
#include <winsock2.h>
#include <winternl.h>
#include <ws2tcpip.h>

#include <stdio.h>
#include <string.h>

#include "internal.h"

void px__sigpipe_hold(void) {}

void px__sigpipe_release(void) {}

/* ---- Winsock start-up, once per process. ------------------------------- */

static INIT_ONCE px__wsa_once = INIT_ONCE_STATIC_INIT;
static int px__wsa_error;

static BOOL CALLBACK px__wsa_init(PINIT_ONCE once, PVOID arg, PVOID *ctx) {
  (void)once;
  (void)arg;
  (void)ctx;
  WSADATA wsa;
  int r = WSAStartup(MAKEWORD(2, 2), &wsa);
  px__wsa_error = r == 0 ? 0 : px__win_error((unsigned long)r);
  return TRUE;
}

int px__win_startup(void) {
  InitOnceExecuteOnce(&px__wsa_once, px__wsa_init, NULL, NULL);
  return px__wsa_error;
}

int px__os_net_init(void) {
  return px__win_startup();
}

/* ---- What a handle is. ------------------------------------------------- */

static bool px__is_socket(px_fd fd) {
  int type;
  int len = sizeof(type);
  return getsockopt((SOCKET)fd, SOL_SOCKET, SO_TYPE, (char *)&type, &len) == 0;
}

int px__win_kind(px_fd fd) {
  HANDLE h = (HANDLE)fd;
  DWORD t = GetFileType(h);
  if (t == FILE_TYPE_UNKNOWN && GetLastError() != NO_ERROR)
    return px__is_socket(fd) ? PX__H_SOCKET : PX_EBADF;
  switch (t) {
    case FILE_TYPE_DISK:
      return PX__H_FILE;
    case FILE_TYPE_CHAR:
      return PX__H_CHAR;
    default: /* sockets report FILE_TYPE_PIPE too */
      return px__is_socket(fd) ? PX__H_SOCKET : PX__H_PIPE;
  }
}

int px__os_is_stream(px_fd fd) {
  int k = px__win_kind(fd);
  return k < 0 ? k : k != PX__H_FILE;
}

/* IOCP starts every op as it is submitted: nothing to hurry. */
bool px__os_is_direct(px_fd fd) {
  (void)fd;
  return false;
}

/* A file or pipe opened without FILE_FLAG_OVERLAPPED: its I/O is
 * synchronous, and a completion port refuses it (FileModeInformation's
 * FILE_SYNCHRONOUS_IO_ALERT or _NONALERT; no header of mingw-w64 names
 * them). */
bool px__win_synchronous(px_fd fd) {
  IO_STATUS_BLOCK iosb;
  ULONG mode = 0;
  if (NtQueryInformationFile((HANDLE)fd, &iosb, &mode, sizeof(mode),
                             (FILE_INFORMATION_CLASS)16) < 0)
    return false;
  return (mode & (0x10u | 0x20u)) != 0;
}

/* A handle does not carry O_APPEND: px_file_open marks its own. */
bool px__os_is_append(px_fd fd) {
  (void)fd;
  return false;
}

int px__os_writable(px_fd fd) {
  PUBLIC_OBJECT_BASIC_INFORMATION info;
  ULONG len;
  if (px__win_kind(fd) == PX__H_SOCKET)
    return 1;
  if (NtQueryObject((HANDLE)fd, ObjectBasicInformation, &info, sizeof(info),
                    &len) < 0)
    return 1; /* unknown: let the call itself answer */
  return (info.GrantedAccess &
          (FILE_WRITE_DATA | FILE_APPEND_DATA | GENERIC_WRITE)) != 0;
}

int px__os_close(px_fd fd) {
  if (px__is_socket(fd))
    return closesocket((SOCKET)fd) == 0 ? 0 : px__win_error(WSAGetLastError());
  return CloseHandle((HANDLE)fd) ? 0 : px__win_error(GetLastError());
}

int px_adopt(px_loop *loop, px_fd fd) {
  if (loop == NULL || fd == PX_INVALID_FD || fd < 0)
    return PX_EINVAL;
  int r = px__win_startup();
  if (r < 0)
    return r;
  int stream = px__os_is_stream(fd);
  if (stream < 0)
    return stream;
  if (px__fd_get(loop, fd) != NULL)
    return 0;
  r = PX__BK(loop)->adopt(loop, fd);
  return r < 0 ? r : px__fd_register(loop, fd, stream);
}

int px_fd_close_reset(px_loop *loop, px_fd fd) {
  struct linger lg = {.l_onoff = 1, .l_linger = 0};
  int r = px__fd_closable(loop, fd); /* refused: the socket keeps its linger */
  if (r < 0)
    return r;
  setsockopt((SOCKET)fd, SOL_SOCKET, SO_LINGER, (const char *)&lg, sizeof(lg));
  return px_fd_close(loop, fd);
}

int px_shutdown_write(px_fd fd) {
  return shutdown((SOCKET)fd, SD_SEND) == 0 ? 0
                                            : px__win_error(WSAGetLastError());
}

int px_tcp_nodelay(px_fd fd, int on) {
  BOOL v = on != 0;
  if (setsockopt((SOCKET)fd, IPPROTO_TCP, TCP_NODELAY, (const char *)&v,
                 sizeof(v)) != 0)
    return px__win_error(WSAGetLastError());
  return 0;
}

/* ---- Addresses. -------------------------------------------------------- */

static int px__addr_get(px_fd fd, px_addr *addr, bool peer) {
  if (addr == NULL)
    return PX_EINVAL;
  memset(addr, 0, sizeof(*addr));
  int len = (int)sizeof(addr->storage);
  struct sockaddr *sa = (struct sockaddr *)(void *)addr->storage;
  int r = peer ? getpeername((SOCKET)fd, sa, &len)
               : getsockname((SOCKET)fd, sa, &len);
  if (r != 0)
    return px__win_error(WSAGetLastError());
  addr->len = (uint32_t)len;
  return 0;
}

int px_addr_local(px_fd fd, px_addr *addr) {
  return px__addr_get(fd, addr, false);
}

int px_addr_peer(px_fd fd, px_addr *addr) {
  return px__addr_get(fd, addr, true);
}

/* ---- Sockets. ---------------------------------------------------------- */

static int px__socket(int family, SOCKET *out) {
  int r = px__win_startup();
  if (r < 0)
    return r;
  SOCKET s = WSASocketW(family, SOCK_STREAM, IPPROTO_TCP, NULL, 0,
                        WSA_FLAG_OVERLAPPED | WSA_FLAG_NO_HANDLE_INHERIT);
  if (s == INVALID_SOCKET)
    return px__win_error(WSAGetLastError());
  *out = s;
  return 0;
}

int px_tcp_listen_ex(px_loop *loop, const char *ip, int port, int backlog,
                     unsigned flags, px_fd *out) {
  if (loop == NULL || out == NULL || (flags & ~PX_LISTEN_REUSEPORT))
    return PX_EINVAL;
  if (flags & PX_LISTEN_REUSEPORT)
    return PX_EOPNOTSUPP; /* Windows has no SO_REUSEPORT */
  px_addr addr;
  int r = px_addr_set(&addr, ip, port);
  if (r < 0)
    return r;
  SOCKET s;
  r = px__socket(px__addr_family(&addr), &s);
  if (r < 0)
    return r;
  /* No SO_REUSEADDR: on Windows it lets another socket take the port. */
  if (bind(s, (const struct sockaddr *)(const void *)addr.storage,
           (int)addr.len) != 0 ||
      listen(s, backlog > 0 ? backlog : SOMAXCONN) != 0) {
    r = px__win_error(WSAGetLastError());
    closesocket(s);
    return r;
  }
  return px__own(loop, (px_fd)s, true, out);
}

int px_tcp_listen(px_loop *loop, const char *ip, int port, int backlog,
                  px_fd *out) {
  return px_tcp_listen_ex(loop, ip, port, backlog, 0, out);
}

int px_tcp_socket(px_loop *loop, const px_addr *addr, px_fd *out) {
  if (loop == NULL || addr == NULL || out == NULL || addr->len == 0)
    return PX_EINVAL;
  SOCKET s;
  int r = px__socket(px__addr_family(addr), &s);
  if (r < 0)
    return r;
  return px__own(loop, (px_fd)s, true, out);
}

/* Accepts on l the connection whose other end is c: another local process
 * may connect to the short-lived listener first. */
static SOCKET px__accept_from(SOCKET l, SOCKET c) {
  SOCKADDR_IN mine, peer;
  int len = sizeof(mine);
  if (getsockname(c, (struct sockaddr *)&mine, &len) != 0)
    return INVALID_SOCKET;
  for (int tries = 0; tries < 16; tries++) {
    len = sizeof(peer);
    SOCKET s = accept(l, (struct sockaddr *)&peer, &len);
    if (s == INVALID_SOCKET)
      return s;
    if (peer.sin_port == mine.sin_port &&
        peer.sin_addr.s_addr == mine.sin_addr.s_addr) {
      BOOL on = TRUE; /* an in-process channel: no Nagle delay */
      setsockopt(s, IPPROTO_TCP, TCP_NODELAY, (const char *)&on, sizeof(on));
      setsockopt(c, IPPROTO_TCP, TCP_NODELAY, (const char *)&on, sizeof(on));
      return s;
    }
    closesocket(s);
  }
  WSASetLastError(WSAECONNREFUSED);
  return INVALID_SOCKET;
}

/* A connected TCP pair over 127.0.0.1 (blocking calls, before the loop
 * knows the sockets). */
static int px__tcp_pair(SOCKET *a, SOCKET *b) {
  SOCKET l, c = INVALID_SOCKET, s = INVALID_SOCKET;
  SOCKADDR_IN addr = {.sin_family = AF_INET};
  int len = sizeof(addr), r = px__socket(AF_INET, &l);
  if (r < 0)
    return r;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(l, (struct sockaddr *)&addr, sizeof(addr)) != 0 ||
      getsockname(l, (struct sockaddr *)&addr, &len) != 0 ||
      listen(l, 1) != 0 || (r = px__socket(AF_INET, &c)) < 0 ||
      connect(c, (struct sockaddr *)&addr, sizeof(addr)) != 0 ||
      (s = px__accept_from(l, c)) == INVALID_SOCKET) {
    if (r == 0)
      r = px__win_error(WSAGetLastError());
    if (c != INVALID_SOCKET)
      closesocket(c);
    closesocket(l);
    return r;
  }
  closesocket(l);
  *a = c;
  *b = s;
  return 0;
}

int px_socketpair(px_loop *loop, px_fd out[2]) {
  if (loop == NULL || out == NULL)
    return PX_EINVAL;
  SOCKET a = INVALID_SOCKET, b = INVALID_SOCKET;
  int r = px__tcp_pair(&a, &b);
  if (r < 0)
    return r;
  return px__own_pair(loop, (px_fd)a, (px_fd)b, out);
}

/* ---- Pipes and files. -------------------------------------------------- */

int px_pipe(px_loop *loop, px_fd out[2]) {
  static volatile LONG counter;
  if (loop == NULL || out == NULL)
    return PX_EINVAL;
  /* Not guessable by another local process, which could otherwise open
   * the one instance first and make px_pipe fail (ERROR_PIPE_BUSY): the
   * performance counter and a stack address join the pid and counter. */
  char name[128];
  LARGE_INTEGER now;
  QueryPerformanceCounter(&now);
  snprintf(name, sizeof(name), "\\\\.\\pipe\\px-%lu-%ld-%llx-%p",
           (unsigned long)GetCurrentProcessId(),
           (long)InterlockedIncrement(&counter),
           (unsigned long long)now.QuadPart, (void *)&now);
  HANDLE r = CreateNamedPipeA(name,
                              PIPE_ACCESS_INBOUND | FILE_FLAG_OVERLAPPED |
                                  FILE_FLAG_FIRST_PIPE_INSTANCE,
                              PIPE_TYPE_BYTE | PIPE_READMODE_BYTE | PIPE_WAIT |
                                  PIPE_REJECT_REMOTE_CLIENTS,
                              1, 65536, 65536, 0, NULL);
  if (r == INVALID_HANDLE_VALUE)
    return px__win_error(GetLastError());
  HANDLE w = CreateFileA(name, GENERIC_WRITE | FILE_READ_ATTRIBUTES, 0, NULL,
                         OPEN_EXISTING, FILE_FLAG_OVERLAPPED, NULL);
  if (w == INVALID_HANDLE_VALUE) {
    int e = px__win_error(GetLastError());
    CloseHandle(r);
    return e;
  }
  return px__own_pair(loop, (px_fd)r, (px_fd)w, out);
}

static DWORD px__disposition(unsigned flags) {
  if ((flags & PX_O_CREAT) && (flags & PX_O_EXCL))
    return CREATE_NEW;
  if ((flags & PX_O_CREAT) && (flags & PX_O_TRUNC))
    return CREATE_ALWAYS;
  if (flags & PX_O_CREAT)
    return OPEN_ALWAYS;
  if (flags & PX_O_TRUNC)
    return TRUNCATE_EXISTING;
  return OPEN_EXISTING;
}

int px_file_open(px_loop *loop, const char *path, unsigned flags, int mode,
                 px_fd *out) {
  if (loop == NULL || path == NULL || out == NULL || !px__open_flags_ok(flags))
    return PX_EINVAL;
  static const DWORD access[] = {GENERIC_READ, GENERIC_WRITE,
                                 GENERIC_READ | GENERIC_WRITE};
  wchar_t wpath[MAX_PATH * 2];
  if (MultiByteToWideChar(CP_UTF8, 0, path, -1, wpath,
                          (int)(sizeof(wpath) / sizeof(wpath[0]))) == 0)
    return PX_ENAMETOOLONG;
  DWORD attrs =
      FILE_FLAG_OVERLAPPED |
      ((mode & 0222) == 0 ? FILE_ATTRIBUTE_READONLY : FILE_ATTRIBUTE_NORMAL);
  if (flags & PX_O_DIRECT)
    attrs |= FILE_FLAG_NO_BUFFERING | FILE_FLAG_WRITE_THROUGH;
  /* Shared like a POSIX file: others may read, write, rename or delete. */
  HANDLE h = CreateFileW(wpath, access[flags & 0x3u],
                         FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE,
                         NULL, px__disposition(flags), attrs, NULL);
  if (h == INVALID_HANDLE_VALUE)
    return px__win_error(GetLastError());
  int r = px__own(loop, (px_fd)h, false, out);
  /* The handle does not carry O_APPEND: the backend writes at the end. */
  if (r == 0 && (flags & PX_O_APPEND))
    px__fd_get(loop, *out)->append = 1;
  return r;
}

int px_file_size(px_fd fd, uint64_t *size) {
  if (size == NULL || fd == PX_INVALID_FD)
    return PX_EINVAL;
  HANDLE h = (HANDLE)fd;
  BY_HANDLE_FILE_INFORMATION info;
  if (GetFileType(h) != FILE_TYPE_DISK)
    return PX_EINVAL;
  if (!GetFileInformationByHandle(h, &info))
    return px__win_error(GetLastError());
  if (info.dwFileAttributes & FILE_ATTRIBUTE_DIRECTORY)
    return PX_EISDIR;
  *size = ((uint64_t)info.nFileSizeHigh << 32) | info.nFileSizeLow;
  return 0;
}
