/*
 * pam_nsctl.c - an ssh login adopted into a Slurm job lands in the job's nsctl namespaces.
 *
 * pam_slurm_adopt puts an ssh session into the job it picks (the job's extern step and its
 * cgroup) and leaves the job id in the PAM environment (SLURM_JOB_ID). With Slurm's own
 * namespace plugins it also joins the job's namespaces, over an RPC to the job's extern
 * slurmstepd; with nsctl that RPC has nothing to give. This module, placed right after
 * pam_slurm_adopt, takes the same job (SLURM_JOB_ID; without it, the job_<id> of this
 * process's cgroup), reads nsctl's runtime index entry for it with the SPANK plugin's trust
 * rules (contrib/common/nsctl_join.c, the same code), opens every namespace file, joins pid,
 * user and mnt in that order, and checks that a process forked now is born inside all three.
 *
 * Where the join happens (OpenSSH, privilege separation): PAM's account and session stacks
 * run in the privileged per-connection process, the monitor ("sshd: user [priv]"; the
 * sshd-session binary from OpenSSH 9.8 on), the very process pam_slurm_adopt adopts (getpid()).
 * It is single-threaded, as setns into a user or mount namespace requires. Only after
 * pam_open_session does it fork the unprivileged child ("sshd: user@pts/0") that forks the
 * user's shell, so both are born in the job's PID namespace and inherit its user and mount
 * namespaces. (The auth stack runs in a separate forked process: a join there would be lost.)
 * So either stack works; they differ in what a refusal does and what the later modules see:
 *   - account, right after pam_slurm_adopt (recommended): a refusal fails the login and sshd
 *     closes the connection; but every later module runs inside the job's namespaces, and with
 *     a PID namespace the job's /proc has no entry for this process (pam_loginuid then cannot
 *     set the audit login uid). Slurm's own plugins join here too.
 *   - session, as the last line: the other session modules run in the node's namespaces; a
 *     refusal leaves the connection authenticated, but sshd runs no shell, command or subsystem
 *     for a session whose PAM session failed (exit status 254) and allows no forwarding.
 * Configured in both, the second call finds the first one's join (pam_set_data) and does
 * nothing. sshd must run in the node's own mount namespace, where the Prolog binds the
 * namespace files: a bound mount-namespace file is never copied into another mount namespace.
 *
 *   - not adopted into a job (no SLURM_JOB_ID, no job cgroup), or no index entry: the login
 *     has no nsctl namespaces to enter: PAM_IGNORE;
 *   - an entry that cannot be trusted or joined, one made for another user, a dead holder:
 *     the login is denied (PAM_PERM_DENIED) with a message on the user's terminal and in
 *     syslog, or, with on_error=allow, allowed without isolation (PAM_IGNORE, logged).
 *     A login denied after a partial join cannot be undone, but it is denied.
 * With /tmp among the job's private directories (dirs=), TMPDIR=/tmp goes into the PAM
 * environment, as the TaskProlog does for tasks.
 *
 * Arguments: index_dir=/run/nsctl/jobs  on_error=deny|allow
 *
 * Written from scratch for nsctl (MIT).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pwd.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <syslog.h>
#include <unistd.h>

#define PAM_SM_ACCOUNT
#define PAM_SM_SESSION
#include <security/pam_ext.h>
#include <security/pam_modules.h>

#include "nsctl_join.h"

/* pam_set_data key: this handle's process joined a job's namespaces (an earlier stack). */
#define JOINED_KEY "pam_nsctl_joined_job"

struct options {
	char index_dir[PATH_MAX];
	int allow_on_error;
};

static int parse_options(pam_handle_t *pamh, int argc, const char **argv, struct options *opts)
{
	snprintf(opts->index_dir, sizeof(opts->index_dir), "%s", NSCTL_INDEX_DIR);
	opts->allow_on_error = 0;
	for (int i = 0; i < argc; i++) {
		if (strncmp(argv[i], "index_dir=", 10) == 0 && argv[i][10] == '/' &&
		    strlen(argv[i] + 10) < sizeof(opts->index_dir) - 16) {
			snprintf(opts->index_dir, sizeof(opts->index_dir), "%s", argv[i] + 10);
		} else if (strcmp(argv[i], "on_error=deny") == 0) {
			opts->allow_on_error = 0;
		} else if (strcmp(argv[i], "on_error=allow") == 0) {
			opts->allow_on_error = 1;
		} else {
			pam_syslog(pamh, LOG_ERR, "unknown or bad argument '%s'", argv[i]);
			return -1;
		}
	}
	return 0;
}

/* A job id as Slurm prints it: decimal digits, ending the text or a path component. */
static int parse_job_id(const char *text, uint32_t *job_id)
{
	char *end;
	unsigned long value;

	if (!text || text[0] < '0' || text[0] > '9')
		return -1;
	errno = 0;
	value = strtoul(text, &end, 10);
	if (errno || (*end != '\0' && *end != '/' && *end != '\n') || value == 0 ||
	    value > 0xfffffff0UL)
		return -1;
	*job_id = (uint32_t)value;
	return 0;
}

/* The job of this process's cgroup: a ".../job_<id>" component in any hierarchy (v1 or v2). 1
 * found, 0 none, -1 two hierarchies naming different jobs. */
static int job_from_cgroup(uint32_t *job_id)
{
	char line[4096];
	FILE *cgroups = fopen("/proc/self/cgroup", "re");
	int found = 0;

	if (!cgroups)
		return 0;
	while (fgets(line, sizeof(line), cgroups)) {
		uint32_t id;
		char *at = strstr(line, "/job_");
		if (!at || parse_job_id(at + 5, &id) < 0)
			continue;
		if (found && id != *job_id) {
			found = -1;
			break;
		}
		*job_id = id;
		found = 1;
	}
	fclose(cgroups);
	return found;
}

/* Fork a child now: it is born where the user's session will be (the PID namespace joined
 * for children, the user and mount namespaces inherited) and checks it is inside every one
 * of the job's namespaces; its verdict comes back through a pipe. 0 inside, -1 not. */
static int check_a_child_is_born_inside(struct nsctl_job *job, char *err, size_t errlen)
{
	struct sigaction dfl = {.sa_handler = SIG_DFL}, saved;
	int pipefd[2], status = 0;
	ssize_t len;
	pid_t pid;

	if (pipe2(pipefd, O_CLOEXEC) < 0) {
		snprintf(err, errlen, "pipe: %s", strerror(errno));
		return -1;
	}
	/* The child must be ours to reap, whatever the application does with SIGCHLD. */
	sigemptyset(&dfl.sa_mask);
	sigaction(SIGCHLD, &dfl, &saved);
	pid = fork();
	if (pid == 0) {
		char why[PATH_MAX + 256] = "";
		close(pipefd[0]);
		if (nsctl_inside(job, NSCTL_ALL, why, sizeof(why)) != 1) {
			if (write(pipefd[1], why, strlen(why)) < 0)
				_exit(2);
			_exit(1);
		}
		_exit(0);
	}
	close(pipefd[1]);
	if (pid < 0) {
		snprintf(err, errlen, "cannot start a process in the job's namespaces: %s%s",
			 strerror(errno),
			 errno == ENOMEM ? " (the job's PID namespace has no init any more)" : "");
		close(pipefd[0]);
		sigaction(SIGCHLD, &saved, NULL);
		return -1;
	}
	len = read(pipefd[0], err, errlen - 1);
	close(pipefd[0]);
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	sigaction(SIGCHLD, &saved, NULL);
	if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
		return 0;
	if (len > 0)
		err[len] = '\0';
	else
		snprintf(err, errlen, "a process forked after the join is not inside the job's "
				      "namespaces");
	return -1;
}

static void forget(pam_handle_t *pamh, void *data, int error_status)
{
	(void)pamh;
	(void)error_status;
	free(data);
}

static int join_job(pam_handle_t *pamh, int argc, const char **argv, const char *stack)
{
	char err[PATH_MAX + 256];
	struct options opts;
	struct nsctl_job job = {.fds = {-1, -1, -1}};
	const void *joined = NULL;
	const char *user = NULL, *env_id;
	uint32_t job_id = 0, cgroup_job = 0;
	int rc, in_cgroup;

	if (parse_options(pamh, argc, argv, &opts))
		return PAM_SERVICE_ERR;
	if (pam_get_data(pamh, JOINED_KEY, &joined) == PAM_SUCCESS && joined)
		return PAM_SUCCESS; /* joined in an earlier stack (account, then session) */

	/* pam_slurm_adopt's choice: the job it adopted this process into. */
	env_id = pam_getenv(pamh, "SLURM_JOB_ID");
	in_cgroup = job_from_cgroup(&cgroup_job);
	if (env_id) {
		if (env_id[strspn(env_id, "0123456789")] != '\0' || parse_job_id(env_id, &job_id)) {
			snprintf(err, sizeof(err), "SLURM_JOB_ID '%.32s' is not a job id", env_id);
			goto fail;
		}
		if (in_cgroup != 0 && (in_cgroup < 0 || cgroup_job != job_id)) {
			snprintf(err, sizeof(err), "SLURM_JOB_ID is %u but this process is in %s",
				 job_id, in_cgroup < 0 ? "the cgroups of two jobs" : "another job's cgroup");
			goto fail;
		}
	} else if (in_cgroup == 1) {
		job_id = cgroup_job;
	} else if (in_cgroup < 0) {
		snprintf(err, sizeof(err), "this process is in the cgroups of two jobs");
		goto fail;
	} else {
		return PAM_IGNORE; /* not adopted into a job: nothing of nsctl's to enter */
	}

	if (pam_get_user(pamh, &user, NULL) != PAM_SUCCESS || !user) {
		snprintf(err, sizeof(err), "cannot get the user's name");
		goto fail;
	}
	rc = nsctl_read_entry(opts.index_dir, job_id, &job, err, sizeof(err));
	if (rc == 0)
		return PAM_IGNORE; /* the job has no nsctl namespaces */
	if (rc < 0)
		goto fail;
	struct passwd *pw = getpwnam(user);
	if (!pw || (unsigned long)pw->pw_uid != job.uid) {
		snprintf(err, sizeof(err), "the index entry is for uid %lu, not for %s", job.uid,
			 user);
		goto fail;
	}
	if (nsctl_open(&job, err, sizeof(err)))
		goto fail;
	if (!nsctl_holder_alive(&job)) {
		snprintf(err, sizeof(err), "the job's PID namespace is gone (its holder, pid %lu, died)",
			 job.holder_pid);
		goto fail;
	}
	/* Logged before the join: from here on this process may see another /dev/log (and, with
	 * a PID namespace, a /proc in which it has no entry). */
	pam_syslog(pamh, LOG_INFO, "%s: entering the namespaces of job %u (%s%s%s) in the %s stack",
		   user, job_id, nsctl_has(&job, NSCTL_PID) ? "pid," : "",
		   nsctl_has(&job, NSCTL_USER) ? "user," : "", "mnt", stack);
	if (nsctl_setns(&job, NSCTL_ALL, err, sizeof(err)))
		goto fail;
	/* setns(CLONE_NEWNS) moved root and cwd to the root of the job's mount namespace. */
	if (chdir("/") < 0) {
		snprintf(err, sizeof(err), "chdir /: %s", strerror(errno));
		goto fail;
	}
	if (check_a_child_is_born_inside(&job, err, sizeof(err)))
		goto fail;
	nsctl_close(&job);
	uint32_t *mark = malloc(sizeof(*mark));
	if (mark) {
		*mark = job_id;
		if (pam_set_data(pamh, JOINED_KEY, mark, forget) != PAM_SUCCESS)
			free(mark);
	}
	if (job.tmp_private && pam_putenv(pamh, "TMPDIR=/tmp") != PAM_SUCCESS) {
		snprintf(err, sizeof(err), "cannot set TMPDIR=/tmp");
		goto fail;
	}
	return PAM_SUCCESS;
fail:
	nsctl_close(&job);
	pam_syslog(pamh, LOG_ERR, "job %u: %s%s", job_id, err,
		   opts.allow_on_error ? "; allowing the login without isolation (on_error=allow)"
				       : "; login denied");
	if (opts.allow_on_error)
		return PAM_IGNORE;
	pam_error(pamh, "Access denied by pam_nsctl: the namespaces of job %u cannot be entered "
			"(%s)",
		  job_id, err);
	return PAM_PERM_DENIED;
}

PAM_EXTERN int pam_sm_acct_mgmt(pam_handle_t *pamh, int flags, int argc, const char **argv)
{
	(void)flags;
	return join_job(pamh, argc, argv, "account");
}

PAM_EXTERN int pam_sm_open_session(pam_handle_t *pamh, int flags, int argc, const char **argv)
{
	(void)flags;
	int rc = join_job(pamh, argc, argv, "session");
	return rc == PAM_PERM_DENIED ? PAM_SESSION_ERR : rc;
}

PAM_EXTERN int pam_sm_close_session(pam_handle_t *pamh, int flags, int argc, const char **argv)
{
	(void)pamh;
	(void)flags;
	(void)argc;
	(void)argv;
	return PAM_SUCCESS;
}
