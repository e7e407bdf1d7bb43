#!/usr/bin/env python3
"""Writes the seed corpus of the op-sequence fuzzer (fuzz/ops_fuzz.c) into
fuzz/corpus/ops/: one small program per behaviour worth starting from.

A program is a configuration byte (ring entries 8/16/64/256 in bits 0-1,
pooled buffers 1-4 in bits 2-3) and eight-byte instructions:
[what, slot, handle, len (2 bytes), o, target, b7] as ops_fuzz.c decodes
them.  Run it from the repository's root after changing either file:

    python3 fuzz/ops_seeds.py
"""
import os

(RECV, READ, READV, SEND, WRITE, WRITEV, POOLED, NOP, TIMEOUT, POST, FSYNC,
 CANCEL, CLOSE, FD_CLOSE, SHUTDOWN, DEADLINE, PEER_WRITE, PEER_READ, RELEASE,
 RUN_NOWAIT, RUN_ONCE, RUN_DEFAULT, WAIT, REOPEN, STALE) = range(25)
A, B, PR, PW, FILE = range(5)  # socket ends, pipe ends, the temp file
CUR = 0                        # o below 128: PX_CUR


def at(offset):
    """o for a file offset (a multiple of 64 up to 8128)."""
    return 128 + offset // 64


def cfg(entries=256, buffers=2):
    return bytes([{8: 0, 16: 1, 64: 2, 256: 3}[entries] | (buffers - 1) << 2])


def i(what, slot=0, h=A, len=1, o=0, target=0, b7=0):
    x = len - 1
    b3, b4 = (x, 0) if x < 64 else (0xe0 + (x >> 8), x & 0xff)
    return bytes([what, slot, h, b3, b4, o, target, b7])


CHAIN = 0xf0  # b7: the callback resubmits its op twice

SEEDS = {
    'recv_then_peer_write': [i(RECV, 0, A, 16), i(PEER_WRITE, 0, B, 8),
                             i(RUN_ONCE), i(RUN_ONCE)],
    'send_and_recv': [i(SEND, 0, A, 32), i(RECV, 1, B, 64), i(RUN_DEFAULT)],
    'cancel_pending_recv': [i(RECV, 0, A, 8), i(CANCEL, 1, target=0),
                            i(RUN_DEFAULT)],
    'cancel_after_data': [i(RECV, 0, A, 8), i(PEER_WRITE, 0, B, 4),
                          i(RUN_NOWAIT), i(CANCEL, 1, target=0),
                          i(RUN_DEFAULT)],
    'close_with_recvs_in_flight': [i(RECV, 0, A, 8), i(RECV, 1, A, 8),
                                   i(CLOSE, 2, A), i(STALE, 3, A),
                                   i(RUN_DEFAULT), i(STALE, 3, A)],
    'close_both_ends_and_reopen': [i(CLOSE, 0, A), i(CLOSE, 1, B),
                                   i(RUN_DEFAULT), i(REOPEN, 0, A),
                                   i(RECV, 2, A, 8), i(PEER_WRITE, 0, B, 8),
                                   i(RUN_DEFAULT)],
    'fd_close_busy_then_free': [i(RECV, 0, A, 8), i(FD_CLOSE, 0, A),
                                i(CANCEL, 1, target=0), i(RUN_DEFAULT),
                                i(FD_CLOSE, 0, A), i(STALE, 2, A)],
    'recv_deadline_fires': [i(DEADLINE, 0, o=1), i(RECV, 0, A, 8),
                            i(RUN_DEFAULT), i(RUN_DEFAULT)],
    'zero_deadline_with_data_waiting': [i(PEER_WRITE, 0, B, 4),
                                        i(DEADLINE, 0, o=0), i(RECV, 0, A, 8),
                                        i(RUN_ONCE)],
    'deadline_refused_then_kept': [i(DEADLINE, 0, o=2), i(NOP, 0),
                                   i(RECV, 0, A, 8), i(RUN_DEFAULT)],
    'pipe_write_and_read': [i(WRITE, 0, PW, 100), i(READ, 1, PR, 200),
                            i(RUN_DEFAULT)],
    'pipe_write_after_reader_closed': [i(CLOSE, 0, PR), i(RUN_DEFAULT),
                                       i(WRITE, 1, PW, 10), i(RUN_DEFAULT)],
    'pipe_read_after_writer_closed': [i(CLOSE, 0, PW), i(READ, 1, PR, 8),
                                      i(RUN_DEFAULT)],
    'file_at_offsets': [i(WRITE, 0, FILE, 100, at(6400)),
                        i(READ, 1, FILE, 200, at(6336)), i(RUN_DEFAULT),
                        i(READV, 2, FILE, 300, at(4032), b7=7),
                        i(WRITEV, 3, FILE, 64, at(0), b7=0), i(RUN_DEFAULT)],
    'file_at_cur_and_fsync': [i(READ, 0, FILE, 50, CUR),
                              i(READ, 1, FILE, 50, CUR), i(RUN_DEFAULT),
                              i(WRITE, 2, FILE, 10, CUR), i(RUN_DEFAULT),
                              i(FSYNC, 3, o=1), i(RUN_DEFAULT)],
    'file_read_cancelled': [i(READ, 0, FILE, 4096, at(0)),
                            i(CANCEL, 1, target=0), i(RUN_DEFAULT)],
    'pooled_recv': [i(POOLED, 0, A, o=0), i(PEER_WRITE, 0, B, 100),
                    i(RUN_DEFAULT), i(RELEASE), i(RUN_NOWAIT)],
    'pooled_multishot': [i(POOLED, 0, A, o=1), i(PEER_WRITE, 0, B, 200),
                         i(RUN_ONCE), i(RUN_ONCE), i(PEER_WRITE, 0, B, 300),
                         i(RUN_ONCE), i(RELEASE), i(RELEASE),
                         i(CANCEL, 1, target=0), i(RUN_DEFAULT)],
    'pooled_pool_exhausted': [i(POOLED, 0, A), i(PEER_WRITE, 0, B, 10),
                              i(RUN_DEFAULT), i(POOLED, 1, A),
                              i(PEER_WRITE, 0, B, 10), i(RUN_DEFAULT),
                              i(RELEASE), i(POOLED, 2, A), i(RUN_DEFAULT)],
    'shutdown_then_eof_and_epipe': [i(SHUTDOWN, 0, B), i(RECV, 0, A, 8),
                                    i(RUN_DEFAULT), i(SEND, 1, B, 8),
                                    i(RUN_DEFAULT)],
    'timers_and_cancel': [i(TIMEOUT, 0, len=4), i(TIMEOUT, 1, len=1),
                          i(CANCEL, 2, target=0), i(RUN_DEFAULT)],
    'post_nop_and_wait': [i(POST, 0), i(NOP, 1), i(WAIT), i(WAIT),
                          i(RUN_NOWAIT)],
    'callbacks_resubmit': [i(NOP, 0, b7=CHAIN), i(RECV, 1, A, 8, b7=CHAIN),
                           i(PEER_WRITE, 0, B, 3), i(RUN_DEFAULT),
                           i(RUN_DEFAULT)],
    'free_with_everything_in_flight': [i(RECV, 0, A, 8), i(SEND, 1, B, 4096),
                                       i(READ, 2, PR, 8), i(TIMEOUT, 3, len=4),
                                       i(POOLED, 4, B, o=1),
                                       i(READ, 5, FILE, 4096, at(0)),
                                       i(CLOSE, 6, PW), i(POST, 7)],
    'small_ring_overflow': [i(NOP, s) for s in range(6)] +
                           [i(RECV, 6, A, 8), i(RECV, 7, B, 8),
                            i(DEADLINE, 8, o=1), i(RECV, 8, A, 8),
                            i(RUN_DEFAULT), i(PEER_WRITE, 0, A, 8),
                            i(PEER_WRITE, 0, B, 8), i(RUN_DEFAULT)],
    'resubmit_in_flight_refused': [i(RECV, 0, A, 8), i(RECV, 0, A, 8),
                                   i(DEADLINE, 0, o=1),
                                   i(CANCEL, 1, target=0), i(RUN_DEFAULT)],
    'send_until_full': [x for _ in range(24)
                        for x in (i(SEND, 0, A, 4096), i(RUN_ONCE))] +
                       [i(PEER_READ, 0, B, 4096), i(RUN_DEFAULT)],
    'readv_writev_on_sockets': [i(WRITEV, 0, A, 50, b7=10),
                                i(READV, 1, B, 60, b7=0), i(RUN_DEFAULT)],
    'offsets_on_streams': [i(WRITE, 0, A, 10, at(4096)),
                           i(READ, 1, B, 10, at(128)),
                           i(WRITE, 2, PW, 10, at(8000)),
                           i(READ, 3, PR, 10, at(640)), i(RUN_DEFAULT)],
    'wrong_ends_and_kinds': [i(READ, 0, PW, 8), i(WRITE, 1, PR, 8),
                             i(RECV, 2, FILE, 8), i(SEND, 3, FILE, 8),
                             i(POOLED, 4, PR), i(RUN_DEFAULT)],
    'cancel_and_close_together': [i(RECV, 0, A, 8), i(PEER_WRITE, 0, B, 2),
                                  i(CLOSE, 1, A), i(CANCEL, 2, target=0),
                                  i(RUN_DEFAULT)],
    'peer_closed_with_unread_data': [i(PEER_WRITE, 0, A, 10), i(CLOSE, 0, B),
                                     i(RUN_DEFAULT), i(RECV, 1, A, 8),
                                     i(SEND, 2, A, 8), i(RUN_DEFAULT)],
    'cancel_of_idle_and_of_itself': [i(CANCEL, 0, target=1),
                                     i(CANCEL, 1, target=1), i(RUN_DEFAULT)],
    # A multishot receive's end (PX_ENOBUFS) handed out by px_wait after
    # the program released the buffers it had filled.
    'multishot_end_seen_after_releases': [i(POOLED, 0, B, o=1),
                                          i(PEER_WRITE, 0, A, 300), i(WAIT),
                                          i(RELEASE), i(WAIT), i(RELEASE),
                                          i(WAIT), i(WAIT)],
    # A handle's number handed out again while its px_close is pending
    # (posix_aio closes at once): the new pipe may hold it.
    'number_reused_while_closing': [i(CLOSE, 0, A), i(FD_CLOSE, 0, PW),
                                    i(FD_CLOSE, 0, PR), i(REOPEN, 0, PR),
                                    i(WRITEV, 1, A, 8), i(STALE, 2, A),
                                    i(WRITE, 3, PW, 8), i(READ, 4, PR, 8),
                                    i(RUN_DEFAULT)],
    # Found by the fuzzer: with every buffer held, pooled receives on the
    # file (single-shot, multishot) went to io_uring's worker threads.
    'pooled_on_file_with_buffers_held': [i(POOLED, 0, A, o=1),
                                         i(PEER_WRITE, 0, B, 200),
                                         i(RUN_ONCE), i(RUN_ONCE),
                                         i(POOLED, 1, FILE, o=0),
                                         i(POOLED, 2, FILE, o=1),
                                         i(RUN_DEFAULT)],
}

CONFIGS = {'small_ring_overflow': cfg(entries=8),
           'pooled_pool_exhausted': cfg(buffers=1),
           'pooled_multishot': cfg(entries=16, buffers=3)}


def main():
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'corpus',
                       'ops')
    os.makedirs(out, exist_ok=True)
    for name, program in SEEDS.items():
        data = CONFIGS.get(name, cfg()) + b''.join(program)
        with open(os.path.join(out, name), 'wb') as f:
            f.write(data)
    print(f'{len(SEEDS)} seeds in {out}')


if __name__ == '__main__':
    main()
