/*
 * demo.h - stage 07's narrated demo (demo.c).
 */
#ifndef DEMO_H
#define DEMO_H

/* Runs the demo; returns the exit code (0 when every request was answered
 * and the keep-alive connection reached the newest generation). */
int run_demo(const char *trace, int mermaid, int fail);

#endif
