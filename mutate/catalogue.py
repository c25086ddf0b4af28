"""The catalogue of `make mutate`: each stage's lesson undone in the real code.

Every entry is one mistake a student could make, written into the normal path
(not behind a break-it switch) as a single replacement: `old` must occur
exactly once in `file` and becomes `new`. `tests` are the tests of the
mistake's stage (pytest paths or node ids); at least one of them must fail.
`equivalent` stays None unless the mutant cannot change what the program does,
and then says why.
"""

S01 = ["tests/test_01_basic_fork.py"]
S02 = ["tests/test_02_socketpair.py"]
S03 = ["tests/test_03_scm_rights.py"]
S04 = ["tests/test_04_dup_race.py"]
S05 = ["tests/test_05_record.py", "tests/test_05_ssl.py"]
S06 = ["tests/test_06_prefork_server.py", "tests/test_06_hardening.py", "tests/test_gaps_06.py",
       "tests/test_faults.py"]
S07 = ["tests/test_07_hot_restart.py", "tests/test_faults.py"]


def m(id, file, old, new, tests, mistake, equivalent=None):
    return dict(id=id, file=file, old=old, new=new, tests=tests, mistake=mistake,
                equivalent=equivalent)


MUTANTS = [
    # ---- 01: fork after accept ----------------------------------------------
    m("01_parent_keeps_copy", "01-basic-fork/basic_fork.c",
      "\tif (!keep_parent_copy) {\n\t\tclose(conn);\n",
      "\tif (!keep_parent_copy) {\n\t\t(void)conn;\n",
      S01, "After fork the parent does not close its copy of the connection."),
    m("01_child_keeps_listener", "01-basic-fork/basic_fork.c",
      "\t\tclose(lfd); /* a child that serves one connection does not accept */\n",
      "\t\t/* the child keeps the listener */\n",
      S01, "The child that serves one connection keeps the listening socket open."),
    m("01_serve_child_keeps_listener", "01-basic-fork/basic_fork.c",
      "\t\t\tclose(lfd); /* the listener is the parent's: a child only serves */\n",
      "\t\t\t/* the child keeps the listener */\n",
      S01, "In the server, every child keeps the listening socket it inherited."),
    m("01_serve_parent_keeps_copy", "01-basic-fork/basic_fork.c",
      "\t\t\tclose(conn); /* the child's copy is the one that serves */\n",
      "\t\t\t(void)conn; /* the child's copy is the one that serves */\n",
      S01, "The server's parent keeps its copy of every connection it forked a child for."),
    # ---- 02: socketpair -----------------------------------------------------
    m("02_worker_keeps_parent_end", "02-socketpair/socketpair.c",
      "\t\tclose(unused);\n",
      "\t\t(void)unused;\n",
      S02, "The worker keeps the parent's end of the socketpair, so it never sees end-of-file."),
    m("02_parent_keeps_worker_end", "02-socketpair/socketpair.c",
      "\tclose(sv[1]);\n\tsay(n, \"close(fd %d): that end is the worker's",
      "\t(void)sv[1];\n\tsay(n, \"close(fd %d): that end is the worker's",
      S02, "The parent keeps the worker's end of the socketpair after fork."),
    # ---- 03: fdpass ---------------------------------------------------------
    m("03_cmsg_len_is_space", "03-scm-rights/fdpass.c",
      "\t\tcmsg->cmsg_len = CMSG_LEN(bytes);\n",
      "\t\tcmsg->cmsg_len = CMSG_SPACE(bytes);\n",
      S03, "The sender sets cmsg_len to CMSG_SPACE instead of CMSG_LEN, so the padding "
           "counts as one more descriptor."),
    m("03_count_from_controllen", "03-scm-rights/fdpass.c",
      "\t\tsize_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);\n",
      "\t\tsize_t k = (msg.msg_controllen - CMSG_LEN(0)) / sizeof(int);\n",
      S03, "The receiver counts descriptors from the control buffer's CMSG_SPACE size, "
           "not from cmsg_len."),
    m("03_controllen_unbounded", "03-scm-rights/fdpass.c",
      "\t\t.msg_controllen = CMSG_SPACE((rx->max_fds ? rx->max_fds : 1) * sizeof(int)),\n",
      "\t\t.msg_controllen = sizeof control.buf,\n",
      S03, "The receiver offers room for 253 descriptors whatever it asked for, so the "
           "kernel installs everything a peer sends."),
    m("03_ignore_ctrunc", "03-scm-rights/fdpass.c",
      "\tif (msg.msg_flags & MSG_CTRUNC)\n",
      "\tif (msg.msg_flags & 0)\n",
      S03, "The receiver does not look at MSG_CTRUNC, and takes a truncated message as good."),
    m("03_rejected_not_closed", "03-scm-rights/fdpass.c",
      "\t\tclose_all(got, ngot);\n",
      "\t\t(void)close_all;\n",
      S03, "A rejected message's descriptors are left open in the receiver's table."),
    m("03_no_cmsg_cloexec", "03-scm-rights/fdpass.c",
      "\tint flags = (rx->flags & FDPASS_NO_CLOEXEC) ? 0 : MSG_CMSG_CLOEXEC;\n",
      "\tint flags = 0;\n",
      S03, "recvmsg without MSG_CMSG_CLOEXEC: received descriptors leak into every exec."),
    m("03_sigpipe", "03-scm-rights/fdpass.c",
      "\t\tn = sendmsg(sock, &msg, MSG_NOSIGNAL);\n",
      "\t\tn = sendmsg(sock, &msg, 0);\n",
      S03, "sendmsg without MSG_NOSIGNAL: a dead peer kills the sender with SIGPIPE."),
    m("03_empty_payload_allowed", "03-scm-rights/fdpass.c",
      "\t\tif (type == SOCK_STREAM)\n\t\t\treturn status(FDPASS_EEMPTY, EINVAL);\n",
      "\t\tif (type == -1)\n\t\t\treturn status(FDPASS_EEMPTY, EINVAL);\n",
      S03, "An empty payload is sent on a stream socket, where the descriptors never arrive."),
    m("03_no_fd_accepted", "03-scm-rights/fdpass.c",
      "\telse if (ngot == 0 && (rx->flags & FDPASS_NEED_FD))\n",
      "\telse if (ngot == 0 && (rx->flags & 0))\n",
      S03, "A message without a descriptor is taken as if it carried one."),
    # ---- 04: the dup race ---------------------------------------------------
    m("04_fixed_keeps_watching", "04-dup-race/dup_race.c",
      "\t\twatch_del(&p->w, c); /* first: while the number still names this connection */\n",
      "\t\t/* still watched */\n",
      S04, "The fixed hand-off sends and closes the connection but leaves it in the watch set."),
    m("04_article_no_fd_clr", "04-dup-race/watchset.c",
      "\tif (w->kind != P_EPOLL && !w->no_fd_clr)\n",
      "\tif (w->kind != P_EPOLL && w->no_fd_clr)\n",
      S04, "The article's dup-then-close without FD_CLR: the closed number stays in the select set."),
    m("04_select_del_noop", "04-dup-race/watchset.c",
      "\t\t\tFD_CLR(fd, &w->set);\n\t\treturn 0;\n\tcase P_POLL:",
      "\t\t\t(void)fd;\n\t\treturn 0;\n\tcase P_POLL:",
      S04, "Removing a descriptor from a select loop forgets the FD_CLR."),
    m("04_epoll_del_noop", "04-dup-race/watchset.c",
      "\t\treturn epoll_ctl(w->epfd, EPOLL_CTL_DEL, fd, NULL);\n",
      "\t\treturn 0;\n",
      S04, "An epoll loop hands a descriptor off without EPOLL_CTL_DEL, trusting close()."),
    m("04_close_before_send", "04-dup-race/dup_race.c",
      "\t\tsend_to_worker(p, c, id);\n\t\tclose(c);\n\t\tset_owner(p, c, 0);\n",
      "\t\tclose(c);\n\t\tsend_to_worker(p, c, id);\n\t\tset_owner(p, c, 0);\n",
      S04, "The fixed hand-off closes the connection before sending it."),
    # ---- 05: TLS export and record layer ------------------------------------
    m("05_read_seq_off_by_one", "05-ssl/tls_export.c",
      "\tst->rd.seq = c->rd_records;\n",
      "\tst->rd.seq = c->rd_records + 1;\n",
      S05, "The exported read sequence number is one too high."),
    m("05_write_seq_off_by_one", "05-ssl/tls_export.c",
      "\tst->wr.seq = c->wr_records;\n",
      "\tst->wr.seq = c->wr_records + 1;\n",
      S05, "The exported write sequence number is one too high."),
    m("05_nonce_wrong_end", "05-ssl/record.c",
      "\t\tnonce[REC_IV - 1 - i] ^= (uint8_t)(d->seq >> (8 * i));\n",
      "\t\tnonce[i] ^= (uint8_t)(d->seq >> (8 * i));\n",
      S05, "The sequence number is XORed into the wrong end of the IV."),
    m("05_seal_keeps_seq", "05-ssl/record.c",
      "\td->seq++;\n\t*out_len = total;\n",
      "\t*out_len = total;\n",
      S05, "Sealing a record does not advance the write sequence number: every record "
           "reuses one nonce."),
    m("05_pending_dropped", "05-ssl/ssl_handoff.c",
      "\tst.pending_len = l->len;\n",
      "\tst.pending_len = 0;\n",
      S05, "Plaintext OpenSSL had already decrypted is not put in the exported state."),
    m("05_read_ahead_not_refused", "05-ssl/tls_export.c",
      "\tif ((*code = \"read_ahead\", SSL_has_pending(ssl)))\n",
      "\tif ((*code = \"read_ahead\", 0))\n",
      S05, "The export does not refuse a connection whose raw bytes OpenSSL read ahead."),
    m("05_loud_free", "05-ssl/ssl_handoff.c",
      "\tSSL_set_quiet_shutdown(ssl, 1);\n\tSSL_free(ssl);\n\tpc->ssl = NULL;\n",
      "\tSSL_shutdown(ssl);\n\tSSL_free(ssl);\n\tpc->ssl = NULL;\n",
      S05, "The parent sends close_notify before handing over, under a sequence number "
           "the worker will use."),
    m("05_no_flood_cap", "05-ssl/tls_export.c",
      "\treturn ++s->empty_run > TLSX_MAX_EMPTY_RECORDS ? ALERT_UNEXPECTED_MESSAGE : 0;\n",
      "\treturn ++s->empty_run < 0 ? ALERT_UNEXPECTED_MESSAGE : 0;\n",
      S05, "Records without application data are accepted without limit."),
    m("05_outer_bound_only", "05-ssl/record.c",
      "\tif (len > REC_MAX_INNER + REC_TAG)\n",
      "\tif (len > REC_MAX_PLAIN + 256 + REC_TAG)\n",
      S05, "The record header is checked against the RFC's outer bound (2^14 + 256), not "
           "the inner plaintext limit."),
    m("05_seal_inner_limit", "05-ssl/record.c",
      "\tif (len > REC_MAX_PLAIN || pad > REC_MAX_PLAIN || inner > REC_MAX_PLAIN + 1 || total > cap) {\n",
      "\tif (total > cap) {\n",
      S05, "Sealing does not check the inner plaintext limit of 2^14 + 1 bytes."),
    m("05_open_plain_limit_gone", "05-ssl/record.c",
      "\tif (end - 1 > REC_MAX_PLAIN)\n\t\treturn ALERT_RECORD_OVERFLOW;\n",
      "",
      S05, "The opened record's plaintext is not checked against 2^14 bytes.",
      equivalent="rec_open calls rec_check_header first, which refuses a body longer than "
                 "REC_MAX_INNER + REC_TAG: the plaintext left after the type byte is at most "
                 "REC_MAX_INNER - 1 = REC_MAX_PLAIN bytes, so this second check never fires "
                 "(it stays as a guard should the header check change)"),
    # ---- 06: the ack protocol -----------------------------------------------
    m("06_close_before_ack", "06-prefork-server/handoff_server.c",
      "\t\t\t\tsl->un[(sl->un_head + sl->un_count) % cap] = q_pop(d);\n",
      "\t\t\t\tclose(q_at(d, 0)->fd);\n"
      "\t\t\t\tsl->un[(sl->un_head + sl->un_count) % cap] = q_pop(d);\n",
      S06, "The dispatcher closes its copy as soon as sendmsg returns, before the worker acks."),
    m("06_no_redispatch", "06-prefork-server/handoff_server.c",
      "\t\tq_push_front(d, p);\n",
      "\t\tpend_close(&p);\n",
      S06, "When a worker dies, the connections it never acknowledged are closed, not "
           "re-dispatched."),
    m("06_worker_never_acks", "06-prefork-server/handoff_server.c",
      "\tm->type = MSG_ACK; /* the same ids, in the same order */\n"
      "\tsend_msg(w->chan, m, WIRE_LEN(m->count));\n",
      "\tm->type = MSG_ACK; /* the same ids, in the same order */\n",
      S06, "The worker never acknowledges, so the dispatcher holds every copy forever."),
    m("06_worker_keeps_listener", "06-prefork-server/dispatcher.c",
      "\tint own[] = { d->lfd, d->sfd,",
      "\tint own[] = { -1, d->sfd,",
      S06, "A new worker keeps the dispatcher's listening socket."),
    m("06_worker_keeps_queue", "06-prefork-server/dispatcher.c",
      "\tfor (unsigned i = 0; i < d->q_count; i++)\n\t\tpend_close(q_at(d, i));\n",
      "\t/* the queue's connections stay open in the worker */\n",
      S06, "A new worker keeps copies of the connections queued in the dispatcher.",
      equivalent="every queued connection was accepted with SOCK_CLOEXEC and a handoff worker "
                 "is exec'd right after close_inherited(), so the exec closes them anyway; the "
                 "only children that are not exec'd, fork-per-conn's, are forked by a "
                 "dispatcher that never queues (on_accept forks for each connection at once)"),
    m("06_skip_peercred", "06-prefork-server/worker.c",
      "\t\tif (ppid != getppid() || uid != getuid()) {\n",
      "\t\tif (uid != getuid()) {\n",
      S06, "The worker trusts its channel without checking SO_PEERCRED names its parent."),
    m("06_no_respawn_backoff", "06-prefork-server/dispatcher.c",
      "\tsl->respawn_at = now_ms() + sl->backoff_ms;\n",
      "\tsl->respawn_at = now_ms();\n",
      S06, "A worker that cannot be started is retried at once, in a fork loop."),
    m("06_emfile_spins", "06-prefork-server/dispatcher.c",
      "\t\t\t\tepoll_ctl(d->ep, EPOLL_CTL_DEL, d->lfd, NULL);\n"
      "\t\t\t\td->accept_paused = 1;\n",
      "\t\t\t\t/* keep accepting */\n",
      S06, "Out of descriptors, the dispatcher keeps the listener in epoll and spins on accept."),
    m("06_start_failure_says_success", "06-prefork-server/dispatcher.c",
      "\t\terrno = e;\n\t\treturn -1;\n\t}\n\tif (pid == 0) {",
      "\t\t(void)e;\n\t\terrno = 0;\n\t\treturn -1;\n\t}\n\tif (pid == 0) {",
      S06, "A worker that could not be started is reported without the errno of the call "
           "that failed (\"fork: Success\")."),
    # ---- 07: hot restart ----------------------------------------------------
    m("07_close_listener_on_upgrade", "07-hot-restart/hot_restart.c",
      "\tg->accepting = 0;\n\tsay(&g->n, \"generation %d is ready: stopped accepting",
      "\tg->accepting = 0;\n\tclose(g->lfd);\n"
      "\tsay(&g->n, \"generation %d is ready: stopped accepting",
      S07, "The old generation closes its listening socket when the new one is ready, "
           "dropping what is in the queue."),
    m("07_idle_not_passed", "07-hot-restart/hot_restart.c",
      "\t\tif (g->conns[i].fd >= 0 && g->conns[i].len == 0)\n",
      "\t\tif (g->conns[i].fd >= 0 && g->conns[i].len == 0 && 0)\n",
      S07, "The old generation keeps its idle connections instead of passing them on."),
    m("07_upgrade_peer_unchecked", "07-hot-restart/hot_restart.c",
      "\tif (uid != getuid() || pid != expect_pid) {\n",
      "\tif (uid != getuid() || (pid != expect_pid && 0)) {\n",
      S07, "The new generation takes a listener from whoever answers on the upgrade socket."),
    m("07_closes_before_ack", "07-hot-restart/hot_restart.c",
      "\tif (recv_msg(g->chan, ack, sizeof ack, WAIT_MS) < 0)\n\t\treturn -1;\n"
      "\tif (strncmp(ack, \"ACK \", 4) != 0) {\n",
      "\t(void)ack;\n\tif (0) {\n",
      S07, "The old generation closes its copies without waiting for the new one's ACK."),
]
