/*
 * nsctl_join.c - see nsctl_join.h. Written from scratch for nsctl (MIT).
 */
#define _GNU_SOURCE
#include "nsctl_join.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

static const struct {
	const char *name;
	int type;
} kinds[NSCTL_KINDS] = {
	[NSCTL_PID] = {"pid", CLONE_NEWPID},
	[NSCTL_USER] = {"user", CLONE_NEWUSER},
	[NSCTL_MNT] = {"mnt", CLONE_NEWNS},
};

const char *nsctl_kind_name(enum nsctl_kind kind)
{
	return kinds[kind].name;
}

int nsctl_has(const struct nsctl_job *job, enum nsctl_kind kind)
{
	return job->wanted[kind];
}

static int fail(char *err, size_t errlen, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static int fail(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
	return -1;
}

/* Who other than root could change what lies below a directory with this stat. */
static int others_can_write(const struct stat *st)
{
	return st->st_uid != 0 || (st->st_mode & (S_IWGRP | S_IWOTH));
}

/* An fd for index_dir, walked from / one component at a time without following a symlink;
 * -2 when it does not exist, -1 on any other problem. */
static int open_index_dir(const char *index_dir, char *err, size_t errlen)
{
	char copy[PATH_MAX], walked[PATH_MAX] = "";
	char *save = NULL;
	struct stat st;
	int fd;

	if (index_dir[0] != '/' || strlen(index_dir) >= sizeof(copy))
		return fail(err, errlen, "index_dir '%s' is not an absolute path", index_dir);
	snprintf(copy, sizeof(copy), "%s", index_dir);
	fd = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return fail(err, errlen, "cannot open /: %s", strerror(errno));
	for (char *part = strtok_r(copy, "/", &save); part; part = strtok_r(NULL, "/", &save)) {
		/* An ancestor: root's, and writable by others only when sticky. */
		if (fstat(fd, &st) < 0 || st.st_uid != 0 ||
		    ((st.st_mode & (S_IWGRP | S_IWOTH)) && !(st.st_mode & S_ISVTX))) {
			close(fd);
			return fail(err, errlen,
				    "%s (an ancestor of the runtime index) is not root's alone",
				    walked[0] ? walked : "/");
		}
		size_t used = strlen(walked);
		snprintf(walked + used, sizeof(walked) - used, "/%s", part);
		if (strcmp(part, ".") == 0 || strcmp(part, "..") == 0) {
			close(fd);
			return fail(err, errlen, "index_dir '%s' is not normalised", index_dir);
		}
		int child = openat(fd, part, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		int saved = errno;
		close(fd);
		if (child < 0 && saved == ENOENT) {
			fail(err, errlen, "%s: no such directory", walked);
			return -2;
		}
		if (child < 0)
			return fail(err, errlen, "cannot open %s: %s%s", walked, strerror(saved),
				    saved == ELOOP || saved == ENOTDIR ? " (a symlink?)" : "");
		fd = child;
	}
	if (fstat(fd, &st) < 0 || others_can_write(&st)) {
		close(fd);
		return fail(err, errlen,
			    "%s must be a directory owned by root and writable only by root",
			    index_dir);
	}
	return fd;
}

/* Copy a value into dst exactly once; a second occurrence of the key is an error. */
static int set_once(char *dst, size_t size, const char *key, const char *value, char *err,
		    size_t errlen)
{
	if (dst[0] != '\0')
		return fail(err, errlen, "index entry has '%s' twice", key);
	if (value[0] == '\0' || strlen(value) >= size)
		return fail(err, errlen, "index entry has a bad '%s' value", key);
	snprintf(dst, size, "%s", value);
	return 0;
}

static int parse_namespaces(struct nsctl_job *job, char *list, char *err, size_t errlen)
{
	char *save = NULL;
	int last = -1;

	for (char *name = strtok_r(list, ",", &save); name; name = strtok_r(NULL, ",", &save)) {
		int k;
		for (k = 0; k < NSCTL_KINDS; k++)
			if (strcmp(name, kinds[k].name) == 0)
				break;
		if (k == NSCTL_KINDS || k <= last)
			return fail(err, errlen,
				    "index entry names an unknown, repeated or misplaced namespace "
				    "'%s'",
				    name);
		job->wanted[k] = 1;
		last = k;
	}
	if (!job->wanted[NSCTL_MNT])
		return fail(err, errlen, "index entry has no mnt namespace");
	if (job->wanted[NSCTL_PID] != (job->holder_pid > 1))
		return fail(err, errlen, "index entry's holder_pid does not match its namespaces");
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

static int digits(const char *text)
{
	if (text[0] == '\0')
		return 0;
	for (const char *c = text; *c; c++)
		if (*c < '0' || *c > '9')
			return 0;
	return 1;
}

/* dirs=: the job's private directories, comma-separated (none contains a comma), maybe none. */
static int parse_dirs(struct nsctl_job *job, const char *list, int *seen, char *err, size_t errlen)
{
	if ((*seen)++)
		return fail(err, errlen, "index entry has 'dirs' twice");
	for (const char *dir = list;; dir++) {
		size_t len = strcspn(dir, ",");
		if (len == 4 && strncmp(dir, "/tmp", 4) == 0)
			job->tmp_private = 1;
		dir += len;
		if (*dir == '\0')
			return 0;
	}
}

/* Strict key=value parser for the keys the readers need; the others are nsctl's own. */
static int parse_entry(char *text, struct nsctl_job *job, char *err, size_t errlen)
{
	char version[8] = "", job_id[16] = "", uid[24] = "", namespaces[32] = "", holder[24] = "";
	char *save = NULL;
	int dirs_seen = 0;

	if (text[0] == '\0' || text[strlen(text) - 1] != '\n')
		return fail(err, errlen, "index entry is empty or truncated");
	for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		char *value = strchr(line, '=');
		int rc = 0;
		if (!value || value == line)
			return fail(err, errlen, "index entry has a malformed line");
		*value++ = '\0';
		if (strcmp(line, "version") == 0)
			rc = set_once(version, sizeof(version), line, value, err, errlen);
		else if (strcmp(line, "job_id") == 0)
			rc = set_once(job_id, sizeof(job_id), line, value, err, errlen);
		else if (strcmp(line, "uid") == 0)
			rc = set_once(uid, sizeof(uid), line, value, err, errlen);
		else if (strcmp(line, "ns_dir") == 0)
			rc = set_once(job->ns_dir, sizeof(job->ns_dir) - 8, line, value, err, errlen);
		else if (strcmp(line, "namespaces") == 0)
			rc = set_once(namespaces, sizeof(namespaces), line, value, err, errlen);
		else if (strcmp(line, "holder_pid") == 0)
			rc = set_once(holder, sizeof(holder), line, value, err, errlen);
		else if (strcmp(line, "dirs") == 0)
			rc = parse_dirs(job, value, &dirs_seen, err, errlen);
		else if (strcmp(line, "holder_start") == 0)
			rc = set_once(job->holder_start, sizeof(job->holder_start), line, value, err,
				      errlen);
		if (rc)
			return -1;
	}
	if (strcmp(version, "1") != 0)
		return fail(err, errlen, "index entry has version '%s', this reader reads version 1",
			    version);
	char expected[16];
	snprintf(expected, sizeof(expected), "%u", job->job_id);
	if (strcmp(job_id, expected) != 0)
		return fail(err, errlen, "index entry is for job '%s'", job_id);
	if (!digits(uid) || strlen(uid) > 10)
		return fail(err, errlen, "index entry has uid '%s'", uid);
	job->uid = strtoul(uid, NULL, 10);
	if (!digits(holder) || strlen(holder) > 10 || !digits(job->holder_start))
		return fail(err, errlen, "index entry has a bad holder_pid or holder_start");
	job->holder_pid = strtoul(holder, NULL, 10);
	if (!clean_absolute_path(job->ns_dir))
		return fail(err, errlen, "index entry has ns_dir '%s', expected an absolute path",
			    job->ns_dir);
	return parse_namespaces(job, namespaces, err, errlen);
}

int nsctl_read_entry(const char *index_dir, uint32_t job_id, struct nsctl_job *job, char *err,
		     size_t errlen)
{
	char name[16], text[NSCTL_INDEX_MAX + 1];
	struct stat st;
	ssize_t len;
	int dir, fd;

	memset(job, 0, sizeof(*job));
	for (int k = 0; k < NSCTL_KINDS; k++)
		job->fds[k] = -1;
	job->job_id = job_id;
	dir = open_index_dir(index_dir, err, errlen);
	if (dir == -2)
		return 0; /* no runtime index at all: nsctl made nothing on this node */
	if (dir < 0)
		return -1;
	snprintf(name, sizeof(name), "%u", job_id);
	fd = openat(dir, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
	int saved = errno;
	close(dir);
	if (fd < 0 && saved == ENOENT)
		return 0;
	if (fd < 0)
		return fail(err, errlen, "cannot open index entry %s/%s: %s", index_dir, name,
			    strerror(saved));
	/* Only root may decide which namespaces a task or a login enters. */
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || others_can_write(&st)) {
		close(fd);
		return fail(err, errlen,
			    "index entry %s/%s is not a regular file owned and writable only by root",
			    index_dir, name);
	}
	len = read(fd, text, sizeof(text));
	close(fd);
	if (len < 0 || len > NSCTL_INDEX_MAX || memchr(text, '\0', len))
		return fail(err, errlen, "cannot read index entry %s/%s", index_dir, name);
	text[len] = '\0';
	if (parse_entry(text, job, err, errlen))
		return -1;
	return 1;
}

int nsctl_open(struct nsctl_job *job, char *err, size_t errlen)
{
	char path[PATH_MAX + 8]; /* ns_dir is shorter than PATH_MAX - 8 (parse_entry) */
	struct stat st, nsfs;

	if (stat("/proc/self/ns/mnt", &nsfs) < 0)
		return fail(err, errlen, "cannot stat /proc/self/ns/mnt: %s", strerror(errno));
	for (int k = 0; k < NSCTL_KINDS; k++) {
		if (!job->wanted[k])
			continue;
		snprintf(path, sizeof(path), "%s/%s", job->ns_dir, kinds[k].name);
		/* nsctl binds namespaces onto regular files: a symlink there is not nsctl's. */
		job->fds[k] = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
		if (job->fds[k] < 0)
			return fail(err, errlen, "cannot open namespace file %s: %s", path,
				    strerror(errno));
		if (fstat(job->fds[k], &st) < 0 || st.st_dev != nsfs.st_dev)
			return fail(err, errlen,
				    "%s holds no namespace (the job's namespaces are gone)", path);
	}
	return 0;
}

int nsctl_setns(struct nsctl_job *job, unsigned mask, char *err, size_t errlen)
{
	for (int k = 0; k < NSCTL_KINDS; k++) {
		if (!job->wanted[k] || !(mask & NSCTL_BIT(k)))
			continue;
		if (setns(job->fds[k], kinds[k].type) < 0)
			return fail(err, errlen, "cannot join %s namespace %s/%s: %s", kinds[k].name,
				    job->ns_dir, kinds[k].name, strerror(errno));
	}
	return 0;
}

int nsctl_inside(struct nsctl_job *job, unsigned mask, char *err, size_t errlen)
{
	char path[64];
	struct stat mine, theirs;

	for (int k = 0; k < NSCTL_KINDS; k++) {
		if (!job->wanted[k] || !(mask & NSCTL_BIT(k)))
			continue;
		snprintf(path, sizeof(path), "/proc/self/ns/%s", kinds[k].name);
		if (stat(path, &mine) < 0 || fstat(job->fds[k], &theirs) < 0)
			return fail(err, errlen, "cannot compare %s namespaces: %s", kinds[k].name,
				    strerror(errno));
		if (mine.st_dev != theirs.st_dev || mine.st_ino != theirs.st_ino) {
			fail(err, errlen, "not in the job's %s namespace", kinds[k].name);
			return 0;
		}
	}
	return 1;
}

int nsctl_holder_alive(const struct nsctl_job *job)
{
	char path[64], text[1024], *fields;
	ssize_t len;
	int fd;

	if (!job->wanted[NSCTL_PID])
		return 1;
	snprintf(path, sizeof(path), "/proc/%lu/stat", job->holder_pid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	len = read(fd, text, sizeof(text) - 1);
	close(fd);
	if (len <= 0)
		return 0;
	text[len] = '\0';
	/* Field 2 (comm) may hold spaces and ')': the rest starts after the last ')'. Field 3 is
	 * the state, field 22 the start time that tells a reused pid from the holder. */
	fields = strrchr(text, ')');
	if (!fields)
		return 0;
	char state = '\0', *save = NULL;
	int index = 3;
	for (char *f = strtok_r(fields + 1, " ", &save); f; f = strtok_r(NULL, " ", &save), index++) {
		if (index == 3)
			state = f[0];
		if (index == 22)
			return strcmp(f, job->holder_start) == 0 && state != 'Z' && state != 'X';
	}
	return 0;
}

void nsctl_close(struct nsctl_job *job)
{
	for (int k = 0; k < NSCTL_KINDS; k++) {
		if (job->fds[k] >= 0)
			close(job->fds[k]);
		job->fds[k] = -1;
	}
}
