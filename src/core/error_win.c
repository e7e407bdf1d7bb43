/*
 * Windows error codes (GetLastError, WSAGetLastError) to PX_E* codes: the
 * one table, so every backend and helper on Windows reports the same
 * number a POSIX backend gives for the same situation.
 */
#include <windows.h>
#include <winsock2.h>

#include "internal.h"

int px__win_error(unsigned long err) {
  switch (err) {
    case ERROR_SUCCESS:
      return 0;
    case ERROR_OPERATION_ABORTED: /* also WSA_OPERATION_ABORTED */
    case ERROR_REQUEST_ABORTED:
      return PX_ECANCELED;
    case ERROR_NETNAME_DELETED: /* the peer reset a connection */
    case WSAECONNRESET:
    case WSAENETRESET:
      return PX_ECONNRESET;
    case ERROR_CONNECTION_ABORTED:
    case WSAECONNABORTED:
      return PX_ECONNABORTED;
    case ERROR_CONNECTION_REFUSED:
    case ERROR_PORT_UNREACHABLE:
    case WSAECONNREFUSED:
      return PX_ECONNREFUSED;
    case ERROR_BROKEN_PIPE: /* the other end of a pipe is closed */
    case ERROR_NO_DATA:     /* ... while writing */
    case ERROR_PIPE_NOT_CONNECTED:
    case ERROR_GRACEFUL_DISCONNECT:
    case WSAEDISCON:   /* the peer began a graceful close */
    case WSAESHUTDOWN: /* sending after shutdown(SD_SEND) */
      return PX_EPIPE;
    case ERROR_SEM_TIMEOUT:
    case ERROR_TIMEOUT:
    case WAIT_TIMEOUT:
    case WSAETIMEDOUT:
      return PX_ETIMEDOUT;
    case ERROR_FILE_NOT_FOUND:
    case ERROR_PATH_NOT_FOUND:
    case ERROR_NOT_FOUND:
    case ERROR_INVALID_DRIVE:
    case ERROR_INVALID_NAME: /* a character no Windows name may hold */
    case ERROR_BAD_PATHNAME: /* as MSVC's C library and libuv map them */
    case ERROR_BAD_NETPATH:
    case ERROR_BAD_NET_NAME:
      return PX_ENOENT;
    case ERROR_FILE_EXISTS:
    case ERROR_ALREADY_EXISTS:
      return PX_EEXIST;
    case ERROR_ACCESS_DENIED:
    case ERROR_WRITE_PROTECT:
    case WSAEACCES:
      return PX_EACCES;
    case ERROR_INVALID_HANDLE:
    case WSAEBADF:
      return PX_EBADF;
    case WSAENOTSOCK:
      return PX_ENOTSOCK;
    case ERROR_NOT_ENOUGH_MEMORY:
    case ERROR_OUTOFMEMORY:
    case ERROR_NO_SYSTEM_RESOURCES:
    case ERROR_NOT_ENOUGH_QUOTA:
    case ERROR_WORKING_SET_QUOTA:
    case ERROR_INVALID_USER_BUFFER: /* too many requests outstanding */
      return PX_ENOMEM;
    case ERROR_INSUFFICIENT_BUFFER:
    case WSAENOBUFS:
      return PX_ENOBUFS;
    case ERROR_INVALID_PARAMETER:
    case ERROR_NEGATIVE_SEEK:
    case ERROR_INVALID_FUNCTION:
    case WSAEINVAL:
      return PX_EINVAL;
    case ERROR_TOO_MANY_OPEN_FILES:
    case WSAEMFILE:
      return PX_EMFILE;
    case ERROR_DISK_FULL:
    case ERROR_HANDLE_DISK_FULL:
      return PX_ENOSPC;
    case ERROR_DIRECTORY:
      return PX_ENOTDIR;
    case ERROR_FILENAME_EXCED_RANGE:
      return PX_ENAMETOOLONG;
    case ERROR_SHARING_VIOLATION:
    case ERROR_LOCK_VIOLATION:
    case ERROR_BUSY:
    case ERROR_PIPE_BUSY: /* every instance of a named pipe is taken */
      return PX_EBUSY;
    case ERROR_NOT_SUPPORTED:
    case ERROR_CALL_NOT_IMPLEMENTED:
    case WSAEOPNOTSUPP:
      return PX_EOPNOTSUPP;
    case ERROR_NETWORK_UNREACHABLE:
    case WSAENETUNREACH:
      return PX_ENETUNREACH;
    case ERROR_HOST_UNREACHABLE:
    case WSAEHOSTUNREACH:
      return PX_EHOSTUNREACH;
    case WSAENETDOWN:
      return PX_ENETDOWN;
    case ERROR_ADDRESS_ALREADY_ASSOCIATED:
    case WSAEADDRINUSE:
      return PX_EADDRINUSE;
    case WSAEADDRNOTAVAIL:
      return PX_EADDRNOTAVAIL;
    case ERROR_CONNECTION_INVALID:
    case WSAENOTCONN:
      return PX_ENOTCONN;
    case WSAEISCONN:
      return PX_EISCONN;
    case WSAEALREADY:
      return PX_EALREADY;
    case WSAEWOULDBLOCK:
      return PX_EAGAIN;
    case WSAEAFNOSUPPORT:
    case WSAEPFNOSUPPORT:
      return PX_EAFNOSUPPORT;
    case WSAEMSGSIZE:
    case ERROR_MORE_DATA:
      return PX_EMSGSIZE;
    case WSAEFAULT:
    case ERROR_NOACCESS:
      return PX_EFAULT;
    case WSAEINTR:
      return PX_EINTR;
    case ERROR_CRC:
    case ERROR_IO_DEVICE:
      return PX_EIO;
    default:
      return PX_EUNKNOWN;
  }
}
