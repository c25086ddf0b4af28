/*
 * worker_ktls.c - the after-handshake worker's kernel-TLS branch: install
 * the handed-over session in the kernel (ktls.c) and serve lines with plain
 * read(2)/write(2).
 *
 * Called by take_over() in ssl_handoff.c with --ktls auto|force on a kernel
 * that offers the tls ULP.
 * See also: the kernel's Documentation/networking/tls.rst, ktls.h.
 */
#define _GNU_SOURCE
#include "ktls.h"
#include "ssl05.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>

int worker_ktls(struct tls13 *t)
{
	const struct nar *n = t->n;
	int conn = t->conn;
	if (ktls_install(conn, &t->sess.rd, &t->sess.wr) == 0) {
		/* UNTESTED here (no tls module on this kernel): from now on plain
		 * read/write; control records would need recvmsg cmsgs. */
		say(n, "kernel TLS installed: the kernel now holds the session");
		ev(n, "ktls", NULL, "installed=1");
		char buf[LINE_CAP], reply[LINE_CAP + 64];
		size_t k;
		while ((k = next_line(&t->l, buf)) > 0) { /* what the parent had decrypted */
			size_t m = make_reply(reply, sizeof reply, n->role, buf, k);
			if (write_all(conn, reply, m) < 0)
				return 1;
		}
		ssize_t r;
		while ((r = read_within(conn, buf, sizeof buf, IDLE_MS)) > 0) {
			k = make_reply(reply, sizeof reply, n->role, buf, (size_t)r);
			if (write_all(conn, reply, k) < 0)
				break;
		}
		return 1;
	}
	say(n, "kernel TLS install failed (%s): using my own record layer", strerror(errno));
	return 0;
}
