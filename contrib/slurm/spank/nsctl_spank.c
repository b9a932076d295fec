/*
 * nsctl_spank.c - move each task of a job into the namespaces `nsctl setup` made for the job.
 *
 * A Prolog runs before any task exists and a TaskProlog runs as the user, so neither can put a
 * task into a namespace: the join has to happen inside slurmstepd, in the forked task while it
 * is still root and single-threaded. That is slurm_spank_task_init_privileged.
 *
 * All policy lives in nsctl (Python). This plugin only reads nsctl's runtime index entry for the
 * job (format: nsctl/layout.py) and joins what it names:
 *   - no entry for the job           -> nsctl is not active for it: do nothing;
 *   - an entry that cannot be joined -> fail the task with a message in slurmd's log and the
 *                                       job's stderr.
 *
 * plugstack.conf:  required /usr/local/lib/nsctl/nsctl_spank.so [index_dir=/run/nsctl/jobs]
 *
 * Written from scratch for nsctl (MIT); it uses only the public spank.h interface.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <slurm/spank.h>

SPANK_PLUGIN(nsctl, 1);

/* slurm.h's value; spank.h alone does not define it. */
#ifndef SLURM_EXTERN_CONT
#define SLURM_EXTERN_CONT 0xfffffffcU
#endif

#define INDEX_VERSION "1"
#define INDEX_MAX 4096 /* an entry is a dozen short lines; anything bigger is not nsctl's */

/* Join order is fixed: pid (only affects future children), then user (so the mnt namespace's
 * owner grants us CAP_SYS_ADMIN), then mnt. The explicit type makes the kernel check that each
 * file really is that kind of namespace. */
static const struct {
	const char *name;
	int type;
} ns_kinds[] = {
	{"pid", CLONE_NEWPID},
	{"user", CLONE_NEWUSER},
	{"mnt", CLONE_NEWNS},
};
#define NS_COUNT (sizeof(ns_kinds) / sizeof(ns_kinds[0]))

struct entry {
	char job_id[16];
	char uid[16];
	char ns_dir[PATH_MAX];
	int wanted[NS_COUNT];
};

static volatile pid_t task_child = -1;

static int parse_args(int ac, char **av, char *index_dir, size_t size)
{
	snprintf(index_dir, size, "%s", "/run/nsctl/jobs");
	for (int i = 0; i < ac; i++) {
		if (strncmp(av[i], "index_dir=", strlen("index_dir=")) != 0) {
			slurm_error("nsctl: unknown plugstack.conf argument '%s'", av[i]);
			return -1;
		}
		/* Only now: av[i] may be shorter than the prefix. */
		const char *value = av[i] + strlen("index_dir=");
		if (value[0] != '/' || strlen(value) >= size - 16) {
			slurm_error("nsctl: index_dir must be an absolute path, got '%s'", value);
			return -1;
		}
		snprintf(index_dir, size, "%s", value);
	}
	return 0;
}

/* Copy a value into dst exactly once; a second occurrence of the key is an error. */
static int set_once(char *dst, size_t size, const char *key, const char *value)
{
	if (dst[0] != '\0') {
		slurm_error("nsctl: index entry has '%s' twice", key);
		return -1;
	}
	if (value[0] == '\0' || strlen(value) >= size) {
		slurm_error("nsctl: index entry has a bad '%s' value", key);
		return -1;
	}
	snprintf(dst, size, "%s", value);
	return 0;
}

static int parse_namespaces(struct entry *e, char *list)
{
	char *save = NULL;
	int count = 0;

	for (char *name = strtok_r(list, ",", &save); name; name = strtok_r(NULL, ",", &save)) {
		size_t k;
		for (k = 0; k < NS_COUNT; k++)
			if (strcmp(name, ns_kinds[k].name) == 0)
				break;
		if (k == NS_COUNT || e->wanted[k]) {
			slurm_error("nsctl: index entry names unknown or repeated namespace '%s'", name);
			return -1;
		}
		e->wanted[k] = 1;
		count++;
	}
	if (count == 0) {
		slurm_error("nsctl: index entry lists no namespaces");
		return -1;
	}
	return 0;
}

/* Absolute, and no empty, "." or ".." component: the path means what it says. */
static int clean_absolute_path(const char *path)
{
	if (path[0] != '/')
		return 0;
	for (const char *part = path + 1;; part++) {
		size_t len = strcspn(part, "/");
		if (len == 0 || (len == 1 && part[0] == '.') ||
		    (len == 2 && part[0] == '.' && part[1] == '.'))
			return 0;
		part += len;
		if (*part == '\0')
			return 1;
	}
}

/* Strict key=value parser for the keys the plugin needs; other keys (holder_pid, dirs, ...)
 * belong to nsctl and are ignored. */
static int parse_entry(char *text, struct entry *e)
{
	char version[8] = "", namespaces[32] = "";
	char *save = NULL;

	if (text[0] == '\0' || text[strlen(text) - 1] != '\n') {
		slurm_error("nsctl: index entry is empty or truncated");
		return -1;
	}
	for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		char *value = strchr(line, '=');
		if (!value || value == line) {
			slurm_error("nsctl: index entry has a malformed line");
			return -1;
		}
		*value++ = '\0';
		int rc = 0;
		if (strcmp(line, "version") == 0)
			rc = set_once(version, sizeof(version), line, value);
		else if (strcmp(line, "job_id") == 0)
			rc = set_once(e->job_id, sizeof(e->job_id), line, value);
		else if (strcmp(line, "uid") == 0)
			rc = set_once(e->uid, sizeof(e->uid), line, value);
		else if (strcmp(line, "ns_dir") == 0)
			rc = set_once(e->ns_dir, sizeof(e->ns_dir) - 8, line, value);
		else if (strcmp(line, "namespaces") == 0)
			rc = set_once(namespaces, sizeof(namespaces), line, value);
		if (rc)
			return -1;
	}
	if (strcmp(version, INDEX_VERSION) != 0) {
		slurm_error("nsctl: index entry has version '%s', this plugin reads version %s",
			    version, INDEX_VERSION);
		return -1;
	}
	if (!clean_absolute_path(e->ns_dir)) {
		slurm_error("nsctl: index entry has ns_dir '%s', expected an absolute path", e->ns_dir);
		return -1;
	}
	return parse_namespaces(e, namespaces);
}

/* Read the entry for job_id. Returns 1 when it exists and is valid, 0 when there is none. */
static int read_entry(const char *index_dir, uint32_t job_id, struct entry *e)
{
	char path[PATH_MAX], text[INDEX_MAX + 1];
	struct stat st;
	ssize_t len;
	int fd;

	if (snprintf(path, sizeof(path), "%s/%u", index_dir, job_id) >= (int)sizeof(path)) {
		slurm_error("nsctl: job %u: index_dir is too long", job_id);
		return -1;
	}
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0 && errno == ENOENT)
		return 0;
	if (fd < 0) {
		slurm_error("nsctl: job %u: cannot open index entry %s: %s", job_id, path,
			    strerror(errno));
		return -1;
	}
	/* Only root may decide which namespaces a task enters. */
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_uid != 0 ||
	    (st.st_mode & (S_IWGRP | S_IWOTH))) {
		slurm_error("nsctl: job %u: %s is not a root-owned regular file", job_id, path);
		close(fd);
		return -1;
	}
	len = read(fd, text, sizeof(text));
	close(fd);
	if (len < 0 || len > INDEX_MAX || memchr(text, '\0', len)) {
		slurm_error("nsctl: job %u: cannot read index entry %s", job_id, path);
		return -1;
	}
	text[len] = '\0';
	memset(e, 0, sizeof(*e));
	if (parse_entry(text, e))
		goto bad;
	char expected[16];
	snprintf(expected, sizeof(expected), "%u", job_id);
	if (strcmp(e->job_id, expected) != 0) {
		slurm_error("nsctl: index entry %s is for job '%s'", path, e->job_id);
		goto bad;
	}
	return 1;
bad:
	slurm_error("nsctl: job %u: refusing index entry %s", job_id, path);
	return -1;
}

static void forward_signal(int sig)
{
	int saved = errno;
	if (task_child > 0)
		kill(task_child, sig);
	errno = saved;
}

/* After joining a PID namespace only children land in it: fork, let the child become the task,
 * and make this process a transparent stand-in that slurmstepd waits on. Returns only in the
 * child. */
static int fork_into_pid_namespace(uint32_t job_id)
{
	static const int forwarded[] = {SIGTERM, SIGINT,  SIGHUP,  SIGQUIT, SIGUSR1,
					SIGUSR2, SIGCONT, SIGTSTP, SIGALRM, SIGWINCH};
	struct sigaction sa;
	sigset_t block, old;
	int status;

	/* Block forwarded signals across fork so none arrives before task_child is known. */
	sigemptyset(&block);
	for (size_t i = 0; i < sizeof(forwarded) / sizeof(forwarded[0]); i++)
		sigaddset(&block, forwarded[i]);
	sigprocmask(SIG_BLOCK, &block, &old);

	pid_t child = fork();
	if (child < 0) {
		sigprocmask(SIG_SETMASK, &old, NULL);
		slurm_error("nsctl: job %u: fork into the job's PID namespace failed: %s "
			    "(is nsctl's holder process still alive?)",
			    job_id, strerror(errno));
		return -1;
	}
	if (child == 0) {
		sigprocmask(SIG_SETMASK, &old, NULL);
		return 0;
	}

	task_child = child;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = forward_signal;
	sigemptyset(&sa.sa_mask);
	sa.sa_flags = SA_RESTART;
	for (size_t i = 0; i < sizeof(forwarded) / sizeof(forwarded[0]); i++)
		sigaction(forwarded[i], &sa, NULL);
	/* An inherited SIG_IGN for SIGCHLD would make the kernel reap the child for us. */
	signal(SIGCHLD, SIG_DFL);
	sigprocmask(SIG_SETMASK, &old, NULL);

	while (waitpid(child, &status, 0) < 0) {
		if (errno != EINTR)
			_exit(127);
	}
	if (WIFSIGNALED(status)) {
		/* Die of the same signal so slurmstepd records the same status. The child has
		 * already dumped any core; this process must not dump another. */
		int sig = WTERMSIG(status);
		struct rlimit no_core = {0, 0};
		setrlimit(RLIMIT_CORE, &no_core);
		signal(sig, SIG_DFL);
		sigemptyset(&block);
		sigaddset(&block, sig);
		sigprocmask(SIG_UNBLOCK, &block, NULL);
		raise(sig);
		_exit(128 + sig);
	}
	_exit(WIFEXITED(status) ? WEXITSTATUS(status) : 127);
}

int slurm_spank_task_init_privileged(spank_t sp, int ac, char **av)
{
	char index_dir[PATH_MAX], path[PATH_MAX];
	int fds[NS_COUNT] = {-1, -1, -1};
	uint32_t job_id = 0, step_id = 0;
	uid_t job_uid = 0;
	struct entry e;
	int rc = -1;

	if (parse_args(ac, av, index_dir, sizeof(index_dir)))
		return -1;
	if (spank_get_item(sp, S_JOB_ID, &job_id) != ESPANK_SUCCESS || job_id == 0 ||
	    spank_get_item(sp, S_JOB_STEPID, &step_id) != ESPANK_SUCCESS ||
	    spank_get_item(sp, S_JOB_UID, &job_uid) != ESPANK_SUCCESS) {
		slurm_error("nsctl: cannot get the job id, step id or uid from Slurm");
		return -1;
	}
	/* The extern step holds the allocation from outside, as in Slurm's own plugin. */
	if (step_id == SLURM_EXTERN_CONT)
		return 0;

	int found = read_entry(index_dir, job_id, &e);
	if (found <= 0)
		return found;
	char uid_text[16];
	snprintf(uid_text, sizeof(uid_text), "%u", (unsigned)job_uid);
	if (strcmp(e.uid, uid_text) != 0) {
		slurm_error("nsctl: job %u: index entry is for uid '%s', the job runs as %u", job_id,
			    e.uid, (unsigned)job_uid);
		return -1;
	}

	/* Open every file before the first setns: after joining the mnt namespace the paths
	 * (and after the user namespace the privileges to open them) may be gone. */
	for (size_t k = 0; k < NS_COUNT; k++) {
		if (!e.wanted[k])
			continue;
		int len = snprintf(path, sizeof(path), "%s/%s", e.ns_dir, ns_kinds[k].name);
		/* nsctl binds namespaces onto regular files: a symlink there is not nsctl's. */
		fds[k] = len < (int)sizeof(path)
				 ? open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
				 : -1;
		if (fds[k] < 0) {
			slurm_error("nsctl: job %u: cannot open namespace file %s: %s", job_id,
				    path, strerror(errno));
			goto out;
		}
	}
	for (size_t k = 0; k < NS_COUNT; k++) {
		if (fds[k] >= 0 && setns(fds[k], ns_kinds[k].type) < 0) {
			slurm_error("nsctl: job %u: cannot join %s namespace %s/%s: %s", job_id,
				    ns_kinds[k].name, e.ns_dir, ns_kinds[k].name, strerror(errno));
			goto out;
		}
	}
	rc = 0;
out:
	for (size_t k = 0; k < NS_COUNT; k++)
		if (fds[k] >= 0)
			close(fds[k]);
	if (rc == 0 && e.wanted[0])
		rc = fork_into_pid_namespace(job_id);
	return rc;
}
