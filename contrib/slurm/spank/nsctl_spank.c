/*
 * nsctl_spank.c - every task of a job is born inside the namespaces `nsctl setup` made for it.
 *
 * A Prolog runs before any task exists and a TaskProlog runs as the user, so neither can put a
 * task into a namespace: the join has to happen inside the step's slurmstepd, on the thread
 * that opens the step's I/O files and forks every task (job_manager and _fork_all_tasks in
 * src/slurmd/slurmstepd/mgr.c). The kernel's rules shape when:
 *   - slurm_spank_init: unshare(CLONE_FS) (that thread shares root and cwd with the others, and
 *     a mount-namespace join is refused then, EINVAL), then setns into the job's mount
 *     namespace: the step's output files (srun -o /tmp/...), the tasks and the TaskEpilog see
 *     the job's private directories;
 *   - slurm_spank_user_init, right before the tasks are forked: setns into the job's PID
 *     namespace, which only places the children forked afterwards. Not earlier: a thread whose
 *     children go to another PID namespace can no longer create threads (pthread_create fails
 *     with EINVAL), and slurmstepd starts its I/O thread before this hook. The hook runs with
 *     the job user's effective uid; the real and saved uids are root's, so the euid is raised
 *     for the setns and lowered again;
 *   - slurm_spank_task_post_fork, once every task is forked: back to the step's own PID
 *     namespace for later children, so the thread can create threads again; and, when the job
 *     has a PID namespace, back to the node's mount namespace too: the job's one has the job's
 *     own /proc, where slurmstepd could not find itself or its tasks by their pids
 *     (proctrack/linuxproc and jobacct_gather/linux read /proc). Without a PID namespace the
 *     thread stays inside, so the TaskEpilog runs there as well;
 *   - slurm_spank_task_init_privileged, in each task (a single-threaded child, still root):
 *     setns into the job's user namespace (only a single-threaded process may), then check that
 *     the task is inside every namespace of the job, or fail it.
 * So each task is forked straight into the job's namespaces by slurmstepd itself: no extra
 * process, and the task is the process slurmstepd puts into the step's cgroup, tracks, signals
 * and accounts. (SlurmdParameters=contain_spank runs user_init, task_post_fork and task_exit in
 * a clone of slurmstepd, where a PID namespace set for children places only the clone's: a job
 * with a PID namespace then fails every task, saying why. nsctl needs it off, its default; the
 * mount namespace, joined in slurm_spank_init, which is never cloned, is not affected.)
 *
 * All policy lives in nsctl (Python). This plugin only reads nsctl's runtime index entry for the
 * job (contrib/common/nsctl_join.c, shared with the PAM module) and joins what it names:
 *   - no entry for the job           -> nsctl is not active for it: do nothing;
 *   - an entry that cannot be joined -> fail every task, with the reason in slurmd's log and in
 *                                       the job's stderr. (The failure is logged when it is found
 *                                       and reported again by each task: in slurm_spank_init the
 *                                       job's stderr is not connected yet, and a failing init
 *                                       would only say "Plugin initialization failed".)
 *
 * plugstack.conf:  required /usr/local/lib/nsctl/nsctl_spank.so [index_dir=/run/nsctl/jobs]
 *
 * Written from scratch for nsctl (MIT); it uses only the public spank.h interface.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <fcntl.h>
#include <sys/types.h>
#include <unistd.h>

#include <slurm/spank.h>

#include "nsctl_join.h"

SPANK_PLUGIN(nsctl, 1);

/* slurm.h's value; spank.h alone does not define it. */
#ifndef SLURM_EXTERN_CONT
#define SLURM_EXTERN_CONT 0xfffffffcU
#endif

static struct nsctl_job job = {.fds = {-1, -1, -1}};
static int joined;		 /* slurm_spank_init joined this step's thread to `job` */
static int own_pid_ns = -1;	 /* slurmstepd's own PID and mount namespaces, to return to */
static int own_mnt_ns = -1;
static int children_in_job;	 /* the thread's children go to the job's PID namespace */
static pid_t stepd_pid;		 /* slurmstepd itself, where slurm_spank_init runs */
static char failure[PATH_MAX + 256]; /* why this step's tasks cannot join, reported by each */

static int parse_args(int ac, char **av, char *index_dir, size_t size)
{
	snprintf(index_dir, size, "%s", NSCTL_INDEX_DIR);
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

static void close_own(void)
{
	if (own_pid_ns >= 0)
		close(own_pid_ns);
	if (own_mnt_ns >= 0)
		close(own_mnt_ns);
	own_pid_ns = own_mnt_ns = -1;
}

int slurm_spank_init(spank_t sp, int ac, char **av)
{
	char index_dir[PATH_MAX], err[PATH_MAX + 256];
	uint32_t job_id = 0, step_id = 0;
	uid_t job_uid = 0;

	if (!spank_remote(sp))
		return 0; /* srun, sbatch, salloc: nothing to join */
	stepd_pid = getpid();
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

	int found = nsctl_read_entry(index_dir, job_id, &job, err, sizeof(err));
	if (found == 0)
		return 0;
	if (found < 0)
		goto fail;
	if (job.uid != (unsigned long)job_uid) {
		snprintf(err, sizeof(err), "index entry is for uid '%lu', the job runs as %u", job.uid,
			 (unsigned)job_uid);
		goto fail;
	}
	if (nsctl_open(&job, err, sizeof(err)))
		goto fail;
	if (!nsctl_holder_alive(&job)) {
		/* Its PID namespace can start no process any more: every task would fail to fork. */
		snprintf(err, sizeof(err), "the job's PID namespace is gone (its holder, pid %lu, died)",
			 job.holder_pid);
		goto fail;
	}
	if (unshare(CLONE_FS) < 0) {
		snprintf(err, sizeof(err), "unshare(CLONE_FS): %s", strerror(errno));
		goto fail;
	}
	if (nsctl_has(&job, NSCTL_PID) &&
	    ((own_pid_ns = open("/proc/self/ns/pid", O_RDONLY | O_CLOEXEC)) < 0 ||
	     (own_mnt_ns = open("/proc/self/ns/mnt", O_RDONLY | O_CLOEXEC)) < 0)) {
		snprintf(err, sizeof(err), "cannot open /proc/self/ns: %s", strerror(errno));
		goto fail;
	}
	if (nsctl_setns(&job, NSCTL_BIT(NSCTL_MNT), err, sizeof(err)))
		goto fail;
	joined = 1;
	return 0;
fail:
	slurm_error("nsctl: job %u: %s", job_id, err);
	snprintf(failure, sizeof(failure), "%s", err);
	nsctl_close(&job);
	close_own();
	return 0; /* each task fails, where the job's stderr shows why */
}

int slurm_spank_user_init(spank_t sp, int ac, char **av)
{
	char err[PATH_MAX + 256];
	uid_t euid = geteuid();
	int rc;

	(void)sp;
	(void)ac;
	(void)av;
	if (!joined || !nsctl_has(&job, NSCTL_PID))
		return 0;
	if (getpid() != stepd_pid) {
		/* SlurmdParameters=contain_spank: a clone that shares our memory (so each task still
		 * sees this failure) but not the thread that forks the tasks. */
		snprintf(failure, sizeof(failure),
			 "SlurmdParameters=contain_spank runs slurm_spank_user_init outside slurmstepd, "
			 "so no task can be forked into the job's PID namespace: turn it off");
		slurm_error("nsctl: job %u: %s", job.job_id, failure);
		return 0; /* each task fails, where the job's stderr shows why */
	}
	if (euid != 0 && seteuid(0) < 0) {
		slurm_error("nsctl: job %u: cannot regain root to join the PID namespace: %s",
			    job.job_id, strerror(errno));
		return -1;
	}
	rc = nsctl_setns(&job, NSCTL_BIT(NSCTL_PID), err, sizeof(err));
	if (euid != 0 && seteuid(euid) < 0) {
		slurm_error("nsctl: job %u: cannot drop back to uid %u: %s", job.job_id,
			    (unsigned)euid, strerror(errno));
		return -1;
	}
	if (rc) {
		slurm_error("nsctl: job %u: %s", job.job_id, err);
		return -1;
	}
	children_in_job = 1;
	return 0;
}

/* Once the tasks are forked: later children of this thread are the step's own again (and it
 * may create threads), and it sees the node's /proc again. The threads made meanwhile share
 * its root and cwd, hence the second unshare(CLONE_FS). */
static int leave_pid_ns(void)
{
	if (!children_in_job)
		return 0;
	children_in_job = 0;
	if (setns(own_pid_ns, CLONE_NEWPID) < 0 || unshare(CLONE_FS) < 0 ||
	    setns(own_mnt_ns, CLONE_NEWNS) < 0) {
		slurm_error("nsctl: job %u: cannot return to slurmstepd's own namespaces: %s",
			    job.job_id, strerror(errno));
		return -1;
	}
	return 0;
}

int slurm_spank_task_post_fork(spank_t sp, int ac, char **av)
{
	(void)sp;
	(void)ac;
	(void)av;
	return leave_pid_ns();
}

int slurm_spank_task_init_privileged(spank_t sp, int ac, char **av)
{
	char err[PATH_MAX + 256];
	uint32_t job_id = job.job_id;

	(void)sp;
	(void)ac;
	(void)av;
	if (failure[0] != '\0') {
		snprintf(err, sizeof(err), "%s", failure);
		goto fail;
	}
	if (!joined)
		return 0;
	/* The task is a single-threaded child now: the one place a user namespace can be joined. */
	if (nsctl_setns(&job, NSCTL_BIT(NSCTL_USER), err, sizeof(err)))
		goto fail;
	int inside = nsctl_inside(&job, NSCTL_ALL, err, sizeof(err));
	if (inside != 1) {
		if (inside == 0)
			slurm_error("nsctl: job %u: the task was not born inside the job's "
				    "namespaces (is nsctl's holder still alive?)",
				    job_id);
		goto fail;
	}
	nsctl_close(&job); /* the task keeps no descriptor of any namespace */
	close_own();
	return 0;
fail:
	slurm_error("nsctl: job %u: %s", job_id, err);
	return -1;
}

int slurm_spank_exit(spank_t sp, int ac, char **av)
{
	int rc = 0;

	(void)ac;
	(void)av;
	if (spank_remote(sp)) {
		rc = leave_pid_ns();
		nsctl_close(&job);
		close_own();
	}
	return rc;
}
