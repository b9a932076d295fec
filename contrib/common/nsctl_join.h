/*
 * nsctl_join.h - read a job's nsctl runtime index entry and join the namespaces it names.
 *
 * Shared by the SPANK plugin (contrib/slurm/spank) and the PAM module (contrib/pam), so both
 * believe exactly the same entries: the format is nsctl/layout.py's IndexEntry; the trust rules
 * are nsctl's (nsctl(8), RUNTIME INDEX):
 *   - the index directory is reached from / without a symlink, every level a directory owned by
 *     root that only root can write to (or, above the runtime directory, a sticky one);
 *   - the entry is a regular root-owned file that only root can write, read without following
 *     a symlink, at most NSCTL_INDEX_MAX bytes, with version 1 and the job id of its name.
 * Nothing here logs: every failure fills the caller's message buffer.
 *
 * Written from scratch for nsctl (MIT).
 */
#ifndef NSCTL_JOIN_H
#define NSCTL_JOIN_H

#include <limits.h>
#include <stddef.h>
#include <stdint.h>

#define NSCTL_INDEX_DIR "/run/nsctl/jobs"
#define NSCTL_INDEX_MAX 4096

/* The namespace kinds, in join order: pid (affects only future children), then user (so the
 * mnt namespace's owner grants CAP_SYS_ADMIN), then mnt. */
enum nsctl_kind { NSCTL_PID, NSCTL_USER, NSCTL_MNT, NSCTL_KINDS };
#define NSCTL_BIT(kind) (1u << (kind))
#define NSCTL_ALL (NSCTL_BIT(NSCTL_PID) | NSCTL_BIT(NSCTL_USER) | NSCTL_BIT(NSCTL_MNT))

/* Kept out of the plugin's exported symbols: a SPANK or PAM stack may load other objects. */
#define NSCTL_HIDDEN __attribute__((visibility("hidden")))

struct nsctl_job {
	uint32_t job_id;
	unsigned long uid;
	unsigned long holder_pid; /* 0 without a PID namespace */
	char holder_start[24];
	char ns_dir[PATH_MAX];
	int tmp_private;	 /* "/tmp" is one of the entry's dirs= (the TaskProlog's TMPDIR rule) */
	int wanted[NSCTL_KINDS]; /* the kinds the entry names */
	int fds[NSCTL_KINDS];	 /* opened by nsctl_open, -1 otherwise */
};

/* Read and check job_id's entry in index_dir. Returns 1 when it exists and is trusted, 0 when
 * there is none (the job has no nsctl namespaces), -1 on any other problem. */
NSCTL_HIDDEN int nsctl_read_entry(const char *index_dir, uint32_t job_id, struct nsctl_job *job, char *err,
		     size_t errlen);

/* Open every namespace file the entry names, before any setns: after joining the user or mount
 * namespace the paths, or the rights to open them, may be gone. 0 or -1. */
NSCTL_HIDDEN int nsctl_open(struct nsctl_job *job, char *err, size_t errlen);

/* setns into the kinds in `mask` that the job has, in join order, with the explicit type (so
 * the kernel checks each file really is that kind). 0 or -1 (the process may then be partly
 * joined). A multi-threaded caller joining mnt must first unshare(CLONE_FS); user cannot be
 * joined by a multi-threaded process at all. */
NSCTL_HIDDEN int nsctl_setns(struct nsctl_job *job, unsigned mask, char *err, size_t errlen);

/* 1 when this process's own namespaces of the kinds in `mask` (that the job has) are the job's
 * (for pid: the namespace this process itself is in), 0 when not, -1 on error. */
NSCTL_HIDDEN int nsctl_inside(struct nsctl_job *job, unsigned mask, char *err, size_t errlen);

/* 1 when the job's holder (PID 1 of its PID namespace) is alive, or the job has no PID
 * namespace; 0 when it died (nothing can be started in the namespace any more). */
NSCTL_HIDDEN int nsctl_holder_alive(const struct nsctl_job *job);

/* 1 when the job has a namespace of this kind. */
NSCTL_HIDDEN int nsctl_has(const struct nsctl_job *job, enum nsctl_kind kind);

NSCTL_HIDDEN const char *nsctl_kind_name(enum nsctl_kind kind);

NSCTL_HIDDEN void nsctl_close(struct nsctl_job *job);

#endif
