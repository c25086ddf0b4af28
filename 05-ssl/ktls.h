/*
 * ktls.h - hand a TLS 1.3 session's record state to the kernel (kTLS).
 *
 * The kernel's TLS "upper layer protocol" holds exactly what record.h holds
 * per direction - key, iv (split into a 4-byte salt and an 8-byte iv for
 * AES-GCM), and the record sequence number - and then encrypts on write(2)
 * and decrypts on read(2). After that the descriptor can be passed to any
 * process like a plain socket: the session lives in the kernel, not in the
 * process. UNTESTED on the machines this project was built on: their kernel
 * has no "tls" module (/proc/sys/net/ipv4/tcp_available_ulp lists only mptcp).
 *
 * See also: Documentation/networking/tls.rst in the kernel tree, tcp(7)
 * (TCP_ULP), <linux/tls.h>.
 */
#ifndef KTLS_H
#define KTLS_H

#include <stddef.h>

#include "record.h"

/* 1 if the kernel offers the "tls" ULP, 0 if not; `ulps` gets the list the
 * kernel offers (for the message that says why not). -1/errno. */
int ktls_available(char *ulps, size_t cap);

/* Installs TCP_ULP "tls", then TLS_TX from wr and TLS_RX from rd. -1/errno:
 * ENOENT when the kernel has no tls module, EINVAL for an unknown suite. */
int ktls_install(int fd, const struct rec_dir *rd, const struct rec_dir *wr);

#endif
