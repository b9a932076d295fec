/*
 * nsctl-holder: PID 1 of a job's PID namespace, for `nsctl setup --holder PATH`.
 *
 * When PID 1 of a PID namespace exits, the kernel kills the namespace and nothing can enter it
 * again, so this process lives as long as the job. It reaps every orphan re-parented to it, and
 * shows argv[0] (which nsctl sets to "nsctl: [JOB:namespace]") as its name in ps. nsctl has
 * already closed every inherited descriptor and pointed 0, 1 and 2 at /dev/null before the exec.
 * It ends only by SIGKILL (from `nsctl teardown`): as a namespace init, it blocks the rest.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/wait.h>

int main(int argc, char **argv)
{
	sigset_t all, chld;

	if (argc > 0 && argv[0] != NULL)
		prctl(PR_SET_NAME, argv[0], 0, 0, 0); /* comm, as `ps -e` shows it */
	sigfillset(&all);
	sigprocmask(SIG_BLOCK, &all, NULL);
	sigemptyset(&chld);
	sigaddset(&chld, SIGCHLD);
	for (;;) {
		sigwaitinfo(&chld, NULL);
		while (waitpid(-1, NULL, WNOHANG) > 0)
			;
	}
}
