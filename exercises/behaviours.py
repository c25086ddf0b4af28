"""behaviours.py - what each exercise runs, and what each of its tests
checks, in a student's words (exercises/grade.py prints these sentences for
the tests that fail).

An exercise: `dir` (its folder under exercises/), `file` (the stage file the
student's copy stands in for), `targets` (the binaries its tests run),
`tests` (rounds of pytest node ids: a round runs when every earlier one
passed, so the quick tests come first) and `behaviours`, a list of (regex, sentence);
a test's sentence is that of the first regex that matches its id,
`tests/FILE.py::NAME[PARAMS]`. `grade.py NN --list` shows every test with
its sentence (tests/test_exercises.py checks that none is without one).
"""

T03 = "tests/test_03_scm_rights.py::"
I03 = "tests/test_03_interop.py::"
T04 = "tests/test_04_dup_race.py::"
T06 = "tests/test_06_prefork_server.py::"
H06 = "tests/test_06_hardening.py::"
T07 = "tests/test_07_hot_restart.py::"

EX03 = {
    "dir": "03-fdpass",
    "file": "03-scm-rights/fdpass.c",
    "targets": ["03-scm-rights/scm_rights", "03-scm-rights/fdpass_test"],
    "tests": [[T03 + "test_fdpass_unit"] + [T03 + t for t in (
        "test_socket_same_file_different_number",
        "test_received_socket_does_not_survive_exec",
        "test_no_cloexec_leaks_into_exec",
        "test_file_offset_and_status_flags_are_shared",
        "test_pipe_write_end_works_in_the_worker",
        "test_zero_byte_on_stream_never_arrives",
        "test_zero_byte_on_seqpacket_arrives",
        "test_small_control_truncates_and_closes_everything",
        "test_classic_receiver_leaks_what_fdpass_recv_closes",
        "test_serve_worker_holds_the_connection_parent_does_not",
        "test_serve_echoes_bytes_as_they_came",
        "test_serve_many_clients_at_once",
    )], [I03 + t for t in (
        "test_no_descriptor_in_message",
        "test_more_descriptors_than_allowed",
        "test_control_data_truncated",
        "test_two_descriptors_to_a_receiver_built_for_one",
        "test_253_descriptors_in_one_message",
        "test_messages_one_after_another_on_one_connection",
        "test_peer_disconnects_right_after_sending",
        "test_peer_sends_its_own_end_of_the_connection",
        "test_large_payload_with_one_descriptor",
        "test_directory",
        "test_regular_file_and_its_first_line",
        "test_socket",
        "test_other_kind_eventfd",
        "test_mixed_message_in_order",
        "test_every_hostile_case_in_a_row",
        "test_receiver_at_its_descriptor_limit",
        "test_no_descriptor_in_a_long_blob_is_one_error",
        "test_python_send_fds_to_recv",
        "test_send_to_python_recv_fds",
    )]],
    "behaviours": [
        (r"unit\[send_count\.", "fdpass_send must refuse 0 descriptors and more than 253 "
         "(FDPASS_ECOUNT), and send 1 to 253 in one message that fdpass_recv receives whole"),
        (r"unit\[kernel_scm_max_fd\.", "253 descriptors (SCM_MAX_FD) must travel in one message"),
        (r"unit\[empty_payload\.", "a 0-byte message with a descriptor must arrive on seqpacket and "
         "datagram sockets (on a stream socket fdpass_send refuses it)"),
        (r"unit\[cloexec\.", "a received descriptor must be close-on-exec (MSG_CMSG_CLOEXEC), and "
         "not when the caller asked for FDPASS_NO_CLOEXEC"),
        (r"unit\[too_many\.", "one descriptor more than the caller allowed (it fits in the padding "
         "of CMSG_SPACE) must be counted from cmsg_len, refused (FDPASS_ETOOMANY) and closed"),
        (r"unit\[ctrunc\.", "a message whose control data was truncated (MSG_CTRUNC) must be "
         "refused (FDPASS_ECTRUNC) and every descriptor it carried closed"),
        (r"unit\[no_fd\.", "a message without a descriptor is a message (FDPASS_OK, 0 "
         "descriptors), and FDPASS_ENOFD when the caller asked for FDPASS_NEED_FD"),
        (r"unit\[eof_is_not_no_fd\.", "the peer's end-of-stream must be FDPASS_EOF, not a "
         "message without a descriptor"),
        (r"unit\[foreign_cmsg\.", "a control message that is not SCM_RIGHTS (SCM_CREDENTIALS) must "
         "be refused (FDPASS_ECMSG) and the descriptors that came with it closed"),
        (r"unit\[peer_gone\.", "sending to a peer that is gone must be an error (EPIPE), not a "
         "SIGPIPE that kills the sender (MSG_NOSIGNAL)"),
        (r"unit\[large_payload\.", "a payload larger than the socket takes at once: a short send "
         "is told with its byte count (FDPASS_ESHORT), an oversized message is EMSGSIZE"),
        (r"unit\[misuse\.", "a caller's mistake (NULL buffer, no room) is FDPASS_EINVAL, before "
         "any system call"),
        (r"unit\[nonblocking\.", "on a non-blocking socket with nothing to receive, or no room "
         "to send, the answer is FDPASS_EAGAIN and no descriptor moves"),
        (r"unit\[pidfd_cmsg\.", "an SCM_PIDFD control message (SO_PASSPIDFD) must be refused as "
         "foreign, and its pidfd closed too"),
        (r"unit\[eintr\.", "a signal that interrupts recvmsg must not end the wait: retry on EINTR"),
        (r"socket_same_file_different_number|pipe_write_end|file_offset_and_status",
         "the worker must receive the same open file (same inode) under a number of its own"),
        (r"does_not_survive_exec|no_cloexec_leaks", "a received socket must not survive an exec "
         "(MSG_CMSG_CLOEXEC), and must with --no-cloexec"),
        (r"zero_byte_on_stream", "a 0-byte sendmsg on a stream socket sends no descriptor: the "
         "demo's --zero-byte must show nothing arriving"),
        (r"zero_byte_on_seqpacket", "a 0-byte message on a seqpacket socket carries its descriptor"),
        (r"small_control|control_data_truncated", "a message whose control data was truncated "
         "(MSG_CTRUNC) must close every descriptor it carried"),
        (r"classic_receiver|built_for_one|more_descriptors_than_allowed",
         "more descriptors than the receiver allowed must all be closed, not leaked"),
        (r"test_serve_", "--serve: the worker must get each client's connection (close-on-exec) "
         "and echo what the client sent"),
        (r"no_descriptor_in", "a message without a descriptor where one is needed must be refused "
         "as one error"),
        (r"253_descriptors", "253 descriptors (SCM_MAX_FD) must travel in one message"),
        (r"one_after_another|mixed_message|every_hostile_case",
         "message after message on one connection, every descriptor received or closed"),
        (r"peer_disconnects|peer_sends_its_own_end",
         "a sender that goes away right after sending must not lose or leak a descriptor"),
        (r"large_payload_with_one", "a descriptor with a large payload arrives with its first bytes"),
        (r"test_directory|regular_file|test_socket\b|other_kind_eventfd",
         "any kind of open file (directory, file, socket, eventfd) must arrive as itself"),
        (r"descriptor_limit", "a receiver at its descriptor limit (RLIMIT_NOFILE) must not leak"),
        (r"python_send_fds_to_recv|send_to_python_recv_fds",
         "descriptors must pass both ways with another program (Python's send_fds/recv_fds)"),
    ],
}

POLLERS = ("select", "poll", "epoll")
EX04 = {
    "dir": "04-hand-off",
    "file": "04-dup-race/dup_race.c",
    "targets": ["04-dup-race/dup_race"],
    "tests": [
        [T04 + "test_epoll_fix_is_epoll_ctl_del_before_close",
         T04 + "test_demo_runs_three_modes_and_prints_the_table"]
        + [T04 + f"test_children_hold_only_what_they_should[fixed-{p}-0]" for p in POLLERS]
        + [T04 + "test_children_hold_only_what_they_should[fixed-select-1]"],
        [T04 + f"test_matrix[fixed-{p}-{d}]" for p in POLLERS for d in ("nodup", "child-dup")]
        + [T04 + f"test_child_dup_changes_no_outcome[fixed-{p}]" for p in POLLERS]
        + [T04 + "test_serve_worker_holds_only_the_connection_it_serves[fixed]",
           T04 + "test_parent_keeps_the_duplicate_and_the_client_sees_no_eof[fixed-False]"]
        + [T04 + f"test_stress_fixed_loses_nothing[{p}]" for p in POLLERS],
    ],
    "behaviours": [
        (r"epoll_fix", "under epoll the connection must leave the interest list (EPOLL_CTL_DEL) "
         "before it is sent and closed: the trace shows unwatch, sendmsg, close for each one"),
        (r"three_modes", "in the demo's table, --mode fixed must lose no byte, keep no descriptor "
         "and see no stale event"),
        (r"children_hold.*-1\]", "with --child-dup too, the worker must hold the connection it "
         "serves and nothing of the parent's"),
        (r"children_hold", "the worker must hold exactly the connection it serves (its inode), "
         "under select, poll and epoll"),
        (r"matrix\[fixed-(\w+)-nodup", r"under \1, every byte a client sends must reach the worker "
         "(none read by the parent), in the demo and with --serve"),
        (r"matrix\[fixed-(\w+)-child-dup", r"under \1 with --child-dup, every byte must still "
         "reach the worker"),
        (r"child_dup_changes_no_outcome", "the worker's dup (--child-dup) must change no outcome"),
        (r"serve_worker_holds_only", "--serve: the worker must hold only the connection it serves, "
         "no earlier client's"),
        (r"parent_keeps_the_duplicate", "the parent must keep no copy: once the worker has replied "
         "and closed, the client sees end-of-file"),
        (r"stress_fixed_loses_nothing\[(\w+)\]", r"under \1, 1000 connections at natural timing: "
         "nothing stolen, nothing stale, no descriptor growth"),
    ],
}

EX06 = {
    "dir": "06-ack-redispatch",
    "file": "06-prefork-server/handoff_server.c",
    "targets": ["06-prefork-server/handoff_server"],
    "tests": [
        [T06 + "test_demo_crash_before_ack_is_redispatched",
         T06 + "test_curl_every_model[handoff]",
         T06 + "test_die_before_ack_client_still_gets_200"],
        [T06 + "test_batch_with_a_crash_every_unacked_descriptor_is_redispatched",
         T06 + "test_http10_closes_unless_asked_to_keep_alive",
         T06 + "test_dispatcher_descriptors_do_not_grow",
         H06 + "test_every_worker_holds_its_channel_and_its_connections_and_nothing_else",
         T06 + "test_sigkill_idle_worker_is_respawned",
         T06 + "test_sigterm_lets_a_worker_finish_a_request_in_progress[handoff]",
         T06 + "test_wrk_every_model[keep-alive-handoff]",
         T06 + "test_wrk_every_model[close-handoff]",
         T06 + "test_chaos_sigkill_workers_under_load",
         T06 + "test_tls_die_before_ack_redispatches_with_the_state",
         T06 + "test_tls_burst_with_a_crash_every_state_travels"],
    ],
    "behaviours": [
        (r"demo_crash_before_ack.*\[None\]", "the demo: each acknowledged connection's copy is "
         "closed in the dispatcher, and every client is served"),
        (r"demo_crash_before_ack", "the demo with a worker that dies before its ack: the "
         "connection goes to another worker, and its client is served"),
        (r"curl_every_model", "curl gets its answer from a worker, and the connection ends when "
         "the worker closes it (the dispatcher's copy was closed at the ack)"),
        (r"die_before_ack_client", "--die-before-ack: the client of the connection whose worker "
         "died before acknowledging still gets 200"),
        (r"batch_with_a_crash", "a worker that dies holding a batch it never acknowledged: every "
         "one of those connections is dispatched again, to another worker, and served"),
        (r"http10_closes", "a connection the worker closes must end for the client: the "
         "dispatcher keeps no copy after the ack"),
        (r"descriptors_do_not_grow", "the dispatcher's descriptors must not grow with the "
         "connections it served: every acknowledged copy is closed"),
        (r"holds_its_channel", "the dispatcher must hold no copy of a connection a worker "
         "acknowledged"),
        (r"sigkill_idle_worker", "an idle worker killed (SIGKILL) is replaced, and the server "
         "goes on serving"),
        (r"sigterm_lets_a_worker_finish", "SIGTERM: a request in progress is finished, and the "
         "server exits cleanly"),
        (r"wrk_every_model", "under load (wrk), keep-alive and close, every request is answered "
         "without an error"),
        (r"chaos_sigkill", "workers killed at random under load: no client loses its connection"),
        (r"tls_die_before_ack|tls_burst_with_a_crash", "--tls: a connection re-dispatched after "
         "a worker's death travels with its session state, and is served"),
    ],
}

EX07 = {
    "dir": "07-listener-handover",
    "file": "07-hot-restart/hot_restart.c",
    "targets": ["07-hot-restart/hot_restart"],
    "tests": [
        [T07 + "test_demo_every_request_answered_keepalive_reaches_generation_3",
         T07 + "test_handoff_passes_exactly_the_listener_and_idle_connections"],
        [T07 + "test_connections_queued_during_the_upgrade_are_not_lost",
         T07 + "test_new_generation_dying_while_the_old_drains",
         T07 + "test_sighup_during_an_upgrade_is_refused",
         T07 + "test_upgrade_channel_refuses_a_stranger",
         T07 + "test_demo_failed_upgrade_loses_nothing",
         T07 + "test_failed_upgrade_leaves_the_old_one_serving"],
    ],
    "behaviours": [
        (r"demo_every_request_answered", "the demo: two upgrades, every request answered, and "
         "the keep-alive connection served by generation 3 in the end"),
        (r"passes_exactly_the_listener", "the new generation must hold the old one's listening "
         "socket (the same inode, never bound again) and the idle connections, and serve them"),
        (r"queued_during_the_upgrade", "connections that wait in the listen queue during the "
         "upgrade must all be served: the queue is the one socket both generations hold"),
        (r"dying_while_the_old_drains", "a new generation that dies while the old one drains: "
         "nothing is lost"),
        (r"sighup_during_an_upgrade", "a second SIGHUP during an upgrade is refused, and the "
         "upgrade still completes"),
        (r"refuses_a_stranger", "a stranger that connects to the upgrade channel gets nothing"),
        (r"failed_upgrade", "an upgrade that fails (--fail-upgrade exec or crash) leaves the old "
         "generation serving, and loses nothing"),
    ],
}

EXERCISES = {"03": EX03, "04": EX04, "06": EX06, "07": EX07}
