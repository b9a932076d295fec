/*
 * pam_nsctl.c - an ssh login adopted into a Slurm job lands in the job's nsctl namespaces.
 *
 * pam_slurm_adopt puts an ssh session into the job it picks (its cgroup) and leaves the job id
 * in the PAM environment (SLURM_JOB_ID). With Slurm's own namespace plugins it also joins the
 * job's namespaces, over an RPC to the job's extern slurmstepd; with nsctl that RPC has nothing
 * to give. This module, placed right after pam_slurm_adopt, finds the same job (SLURM_JOB_ID,
 * else the job_<id> of this process's cgroup), reads nsctl's runtime index entry for it with
 * the SPANK plugin's trust rules (contrib/common/nsctl_join.c, the same code), opens every
 * namespace file, then joins pid, user and mnt, in that order.
 *
 * Where: in sshd the account and session modules run in the per-connection sshd process that
 * later forks the user's session (after pam_slurm_adopt adopted that very process, getpid(),
 * into the job's cgroup). That process is single-threaded, as setns into a user or mount
 * namespace requires, and joining its PID namespace places every process it forks afterwards,
 * the user's shell included, inside the job's PID namespace. The module therefore joins in
 * pam_sm_acct_mgmt (as pam_slurm_adopt does) and, should it be configured in the session stack
 * instead, in pam_sm_open_session; joining twice is a no-op.
 *
 *   - no SLURM_JOB_ID and no job cgroup, or no index entry: the login has no nsctl namespaces
 *     to enter: PAM_IGNORE;
 *   - an entry that cannot be trusted or joined, or one made for another user: the login is
 *     denied with a message on the user's terminal and in syslog, or, with on_error=allow,
 *     allowed without isolation (logged).
 *
 * Arguments: index_dir=/run/nsctl/jobs  on_error=deny|allow
 *
 * Written from scratch for nsctl (MIT).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pwd.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <unistd.h>

#define PAM_SM_ACCOUNT
#define PAM_SM_SESSION
#include <security/pam_ext.h>
#include <security/pam_modules.h>

#include "nsctl_join.h"

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

/* The job of this process's cgroup: ".../job_<id>/..." in any hierarchy (v1 or v2). */
static int job_from_cgroup(uint32_t *job_id)
{
	char line[4096];
	FILE *cgroups = fopen("/proc/self/cgroup", "re");
	int found = -1;

	if (!cgroups)
		return -1;
	while (found < 0 && fgets(line, sizeof(line), cgroups)) {
		char *at = strstr(line, "/job_");
		if (at && parse_job_id(at + 5, job_id) == 0)
			found = 0;
	}
	fclose(cgroups);
	return found;
}

static int join_job(pam_handle_t *pamh, int argc, const char **argv)
{
	char err[PATH_MAX + 256];
	struct options opts;
	struct nsctl_job job = {.fds = {-1, -1, -1}};
	const char *user = NULL;
	uint32_t job_id = 0;
	int rc;

	if (parse_options(pamh, argc, argv, &opts))
		return PAM_SERVICE_ERR;
	if (parse_job_id(pam_getenv(pamh, "SLURM_JOB_ID"), &job_id) && job_from_cgroup(&job_id))
		return PAM_IGNORE; /* not adopted into a job: nothing of nsctl's to enter */
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
		snprintf(err, sizeof(err), "job %u does not belong to %s", job_id, user);
		goto fail;
	}
	if (nsctl_open(&job, err, sizeof(err)))
		goto fail;
	if (nsctl_inside(&job, NSCTL_ALL, err, sizeof(err)) == 1) {
		nsctl_close(&job); /* account joined already; this is the session stack */
		return PAM_SUCCESS;
	}
	if (!nsctl_holder_alive(&job)) {
		snprintf(err, sizeof(err), "the job's PID namespace is gone (its holder, pid %lu, died)",
			 job.holder_pid);
		goto fail;
	}
	if (nsctl_setns(&job, NSCTL_ALL, err, sizeof(err)))
		goto fail;
	nsctl_close(&job);
	/* setns(CLONE_NEWNS) moves the cwd to the root of the job's mount namespace. */
	if (chdir("/") < 0) {
		snprintf(err, sizeof(err), "chdir /: %s", strerror(errno));
		goto fail;
	}
	pam_syslog(pamh, LOG_INFO, "%s entered the namespaces of job %u", user, job_id);
	return PAM_SUCCESS;
fail:
	nsctl_close(&job);
	pam_syslog(pamh, LOG_ERR, "job %u: %s%s", job_id, err,
		   opts.allow_on_error ? "; allowing the login without isolation" : "");
	if (opts.allow_on_error)
		return PAM_IGNORE;
	pam_error(pamh, "Access denied: the namespaces of job %u cannot be entered (%s)", job_id,
		  err);
	return PAM_PERM_DENIED;
}

PAM_EXTERN int pam_sm_acct_mgmt(pam_handle_t *pamh, int flags, int argc, const char **argv)
{
	(void)flags;
	return join_job(pamh, argc, argv);
}

PAM_EXTERN int pam_sm_open_session(pam_handle_t *pamh, int flags, int argc, const char **argv)
{
	(void)flags;
	int rc = join_job(pamh, argc, argv);
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
