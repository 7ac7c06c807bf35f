// SPDX-License-Identifier: GPL-2.0-only
/*
 * Huge page collapse after dirty logging stops (KVM_CAP_X86_HUGE_PAGE_COLLAPSE).
 *
 * Dirty logging splits huge SPTEs; when it stops, KVM collapses them back
 * inside the ioctl (collapse mode "sync", the default) or later: from a
 * per-VM worker after a delay ("deferred") or when asked for ("ondemand").
 * The subtests run in the collapse mode of the VM, which it takes from
 * kvm.collapse_mode (set by the runner), unless they test the ABI that sets
 * it:
 *
 *  knobs:    bad input to every module parameter and debugfs file is
 *            rejected and changes nothing; new VMs take the parameters;
 *  abi:      KVM_CHECK_EXTENSION reports the modes, KVM_ENABLE_CAP sets
 *            mode, delay and batch, KVM_X86_COLLAPSE_HUGE_PAGES collapses in
 *            the calling thread; bad arguments fail and change nothing;
 *  worker:   no thread appears before the first KVM_RUN (a stop before it
 *            collapses in the ioctl), a lazy-mode VM has its worker after,
 *            a sync one none, and the worker and debugfs go with the VM;
 *  restore:  huge pages come back to exactly the count before logging, none
 *            while logging: at once (sync), not before and not long after
 *            the delay (deferred), only after collapse_now (ondemand); the
 *            guest then finds its memory intact;
 *  inplace:  the TDP MMU maps the huge pages again without the guest
 *            touching its memory, with one remote TLB flush per batch or
 *            fewer, and the guest then runs without faulting them back in;
 *            the shadow MMU zaps, and the guest faults them back.  Either
 *            way the guest finds its memory intact, and logging enabled
 *            again on the recovered slot reports every page written;
 *  stoptime: the ioctl that clears KVM_MEM_LOG_DIRTY_PAGES costs about the
 *            same for a 2MiB and a large slot in the lazy modes, and grows
 *            with the size in sync mode;
 *  starve:   (deferred) a slot that stops and starts logging every third of
 *            the delay does not postpone another slot's collapse;
 *  resume:   (lazy) a collapse interrupted, with another slot made pending
 *            meanwhile, goes on where it stopped: its counts equal those of
 *            the same collapse done in one go, one start and one end traced;
 *  smm:      (lazy) slots with the same id in the two address spaces are
 *            pending and cancelled apart;
 *  races:    re-enabling of logging, mode switches, collapse_now storms,
 *            slot moves and deletes, each while a collapse is pending and
 *            while one is running, on one of two slots that log together,
 *            beside a slot of the same id in the SMM address space: no
 *            dirty page is missed, guest memory is intact, the other
 *            slots' collapses are kept, every stop ends as one collapse or
 *            one cancel;
 *  teardown: VMs destroyed (also through a debugfs file holding the last
 *            reference) with a collapse pending or running: their worker
 *            and debugfs directory are gone, and (-k) kmemleak finds
 *            nothing they leaked.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <linux/bitmap.h>

#include "kvm_util.h"
#include "lazy_collapse.h"
#include "processor.h"
#include "test_util.h"
#include "ucall_common.h"

#define TEST_SLOT	10
#define MAX_SLOTS	4
/* Above the default memory, 1GiB aligned; guest virtual == guest physical. */
#define TEST_GPA	(4ULL << 30)
#define MOVED_GPA	(64ULL << 30)
#define SMALL_SIZE	(2ULL << 20)
#define HPAGE_PAGES	512
#define MAX_VCPUS	8
#define MAX_STOPS	16
#define NO_STAT		(~0ULL)

#define PARAM_DIR	"/sys/module/kvm/parameters/"
#define KMEMLEAK	"/sys/kernel/debug/kmemleak"
static const char * const params[] = {
	"collapse_mode", "collapse_delay_ms", "collapse_batch",
	"collapse_pause_pct",
};

/* What main() puts back after each subtest: the above, and what -x sets. */
static const char * const restored[] = {
	"collapse_mode", "collapse_delay_ms", "collapse_batch",
	"collapse_pause_pct", "nx_huge_pages",
};

static const char * const mode_names[] = {
	[KVM_X86_COLLAPSE_SYNC]		= "sync",
	[KVM_X86_COLLAPSE_DEFERRED]	= "deferred",
	[KVM_X86_COLLAPSE_ONDEMAND]	= "ondemand",
};

/* What the guest does with each page of a pass. */
enum { GUEST_READ, GUEST_WRITE, GUEST_CHECK, GUEST_EXEC };

/* Where GUEST_EXEC calls: past the word each pass writes of a page. */
#define EXEC_OFFSET	8

/* Shared with the guest. */
static uint64_t guest_iter;
static int guest_op;

static uint64_t test_size = 1ULL << 30;
static uint64_t race_size = 64ULL << 20;
static int nr_vcpus = 2;
static int iterations = 20;
static int nr_stops = 5;
static const char *restore_batch;
static bool nx_force;
static bool need_kmemleak;
static unsigned int seed;
static enum vm_mem_backing_src_type backing = VM_MEM_SRC_ANONYMOUS_THP;

struct test_vm {
	struct kvm_vm *vm;
	struct kvm_vcpu *vcpus[MAX_VCPUS];
	pthread_t threads[MAX_VCPUS];
	int nr_slots;
	uint64_t slot_gpa[MAX_SLOTS];
	uint64_t slot_size[MAX_SLOTS];
	uint64_t npages;	/* 4KiB pages of all test slots */
	unsigned long *bitmap;	/* a slot's dirty log (the largest slot's size) */
};

/*
 * vCPU i does every nr_vcpus-th page of the test slots, starting at page i:
 * writes (iteration << 32 | page index) to it, reads it, or checks that it
 * holds what the pass of guest_iter wrote; then reports to the host.
 */
static void guest_code(uint64_t gva, uint64_t npages, uint64_t first,
		       uint64_t stride)
{
	uint64_t i;

	for (;;) {
		uint64_t iter = READ_ONCE(guest_iter);
		int op = READ_ONCE(guest_op);

		/* vCPU 0 runs the function the host put in the first page. */
		if (op == GUEST_EXEC) {
			if (!first)
				((void (*)(void))(gva + EXEC_OFFSET))();
			GUEST_SYNC(iter);
			continue;
		}

		for (i = first; i < npages; i += stride) {
			uint64_t *p = (uint64_t *)(gva + i * PAGE_SIZE);

			if (op == GUEST_WRITE)
				WRITE_ONCE(*p, iter << 32 | i);
			else if (op == GUEST_CHECK)
				GUEST_ASSERT_EQ(READ_ONCE(*p), iter << 32 | i);
			else
				READ_ONCE(*p);
		}
		GUEST_SYNC(iter);
	}
}

static void *vcpu_thread(void *arg)
{
	struct kvm_vcpu *vcpu = arg;
	struct ucall uc;

	vcpu_run(vcpu);
	switch (get_ucall(vcpu, &uc)) {
	case UCALL_SYNC:
		break;
	case UCALL_ABORT:
		REPORT_GUEST_ASSERT(uc);
		break;
	default:
		TEST_FAIL("vCPU %u: unexpected exit %s", vcpu->id,
			  exit_reason_str(vcpu->run->exit_reason));
	}
	return NULL;
}

/* Start one pass of every vCPU over the test memory. */
static void pass_start(struct test_vm *t, uint64_t iter, int op)
{
	int i;

	guest_iter = iter;
	guest_op = op;
	sync_global_to_guest(t->vm, guest_iter);
	sync_global_to_guest(t->vm, guest_op);
	for (i = 0; i < nr_vcpus; i++)
		pthread_create(&t->threads[i], NULL, vcpu_thread, t->vcpus[i]);
}

static void pass_wait(struct test_vm *t)
{
	int i;

	for (i = 0; i < nr_vcpus; i++)
		pthread_join(t->threads[i], NULL);
}

static void pass(struct test_vm *t, uint64_t iter, int op)
{
	pass_start(t, iter, op);
	pass_wait(t);
}

static int slot_id(int i)
{
	return TEST_SLOT + i;
}

static void add_slot(struct test_vm *t, int i, uint64_t gpa)
{
	vm_userspace_mem_region_add(t->vm, backing, gpa, slot_id(i),
				    t->slot_size[i] / PAGE_SIZE, 0);
}

/*
 * A VM with test slots of the given sizes (0-terminated), laid out one after
 * the other from TEST_GPA, which its vCPUs go over in every pass.  The VM has
 * not run yet: its first KVM_RUN is the first pass.
 */
static struct test_vm *create_vm(const uint64_t *sizes)
{
	struct test_vm *t = calloc(1, sizeof(*t));
	uint64_t gpa = TEST_GPA, largest = 0;
	int i;

	TEST_ASSERT(t, "calloc");
	t->vm = vm_create_with_vcpus(nr_vcpus, guest_code, t->vcpus);
	for (i = 0; i < MAX_SLOTS && sizes[i]; i++) {
		t->slot_gpa[i] = gpa;
		t->slot_size[i] = sizes[i];
		add_slot(t, i, gpa);
		/*
		 * 2MiB guest mappings: with shadow paging (npt=0), 4KiB guest
		 * page tables would make the SPTEs indirect, never collapsible.
		 */
		virt_map_level(t->vm, gpa, gpa, sizes[i], PG_LEVEL_2M);
		gpa += sizes[i];
		largest = max(largest, sizes[i]);
	}
	t->nr_slots = i;
	t->npages = (gpa - TEST_GPA) / PAGE_SIZE;
	for (i = 0; i < nr_vcpus; i++)
		vcpu_args_set(t->vcpus[i], 4, TEST_GPA, t->npages, i, nr_vcpus);
	t->bitmap = bitmap_zalloc(largest / PAGE_SIZE);
	return t;
}

static struct test_vm *create_test_vm(uint64_t size)
{
	uint64_t sizes[] = { size, 0 };

	return create_vm(sizes);
}

static void free_test_vm(struct test_vm *t)
{
	kvm_vm_free(t->vm);
	free(t->bitmap);
	free(t);
}

/*
 * Destroy the VM with its memslots in place, as when a VMM exits:
 * kvm_vm_free() deletes every memslot first, which cancels what is pending
 * before the VM goes.
 */
static void destroy_test_vm(struct test_vm *t)
{
	struct userspace_mem_region *region;
	struct hlist_node *node;
	int bkt;

	lc_vm_close_stats(t->vm);
	kvm_vm_release(t->vm);
	hash_for_each_safe(t->vm->regions.slot_hash, bkt, node, region, slot_node)
		munmap(region->mmap_start, region->mmap_size);
	free(t->bitmap);
	free(t);
}

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000ULL + ts.tv_nsec;
}

/* Write @val to @path; 0 or -errno. */
static int write_file(const char *path, const char *val)
{
	int fd = open(path, O_WRONLY);
	ssize_t r;

	TEST_ASSERT(fd >= 0, "open(%s): %s", path, strerror(errno));
	r = write(fd, val, strlen(val));
	if (r < 0)
		r = -errno;
	close(fd);
	return r < 0 ? r : 0;
}

static void read_file(const char *path, char *buf, size_t size)
{
	int fd = open(path, O_RDONLY);
	ssize_t r;

	TEST_ASSERT(fd >= 0, "open(%s): %s", path, strerror(errno));
	r = read(fd, buf, size - 1);
	TEST_ASSERT(r >= 0, "read(%s): %s", path, strerror(errno));
	buf[r] = '\0';
	close(fd);
}

static const char *vm_dir(struct kvm_vm *vm)
{
	static char path[128];

	snprintf(path, sizeof(path), "/sys/kernel/debug/kvm/%d-%d", getpid(),
		 vm->fd);
	return path;
}

static const char *vm_file(struct kvm_vm *vm, const char *name)
{
	static char path[256];

	snprintf(path, sizeof(path), "%s/%s", vm_dir(vm), name);
	return path;
}

static void vm_set(struct kvm_vm *vm, const char *name, const char *val)
{
	int r = write_file(vm_file(vm, name), val);

	TEST_ASSERT(!r, "%s <- %s: %s", name, val, strerror(-r));
}

/* The VM's mode, from the "sync [deferred] ondemand" of collapse_mode. */
static int vm_mode(struct kvm_vm *vm)
{
	char buf[64], want[16];
	int i;

	read_file(vm_file(vm, "collapse_mode"), buf, sizeof(buf));
	for (i = 0; i < ARRAY_SIZE(mode_names); i++) {
		snprintf(want, sizeof(want), "[%s]", mode_names[i]);
		if (strstr(buf, want))
			return i;
	}
	TEST_FAIL("Bad collapse_mode '%s'", buf);
	return -1;
}

static unsigned int vm_knob(struct kvm_vm *vm, const char *name)
{
	char buf[32];

	read_file(vm_file(vm, name), buf, sizeof(buf));
	return atoi(buf);
}

static uint64_t stat_of(struct test_vm *t, const char *name)
{
	uint64_t v = NO_STAT;

	lc_vm_get_stat(t->vm, name, &v, 1);
	TEST_ASSERT(v != NO_STAT, "No VM statistic %s", name);
	return v;
}

/* A statistic of one vCPU. */
static uint64_t vcpu_stat(struct kvm_vcpu *vcpu, const char *name)
{
	struct kvm_stats_desc *descs, *desc;
	struct kvm_stats_header header;
	int fd = vcpu_get_stats_fd(vcpu), i;
	uint64_t v = NO_STAT;

	read_stats_header(fd, &header);
	descs = read_stats_descriptors(fd, &header);
	for (i = 0; i < header.num_desc; i++) {
		desc = get_stats_descriptor(descs, i, &header);
		if (!strcmp(desc->name, name)) {
			read_stat_data(fd, &header, desc, &v, 1);
			break;
		}
	}
	free(descs);
	close(fd);
	TEST_ASSERT(v != NO_STAT, "No vCPU statistic %s", name);
	return v;
}

/* The page faults the vCPUs took, all together. */
static uint64_t vcpu_faults(struct test_vm *t)
{
	uint64_t n = 0;
	int i;

	for (i = 0; i < nr_vcpus; i++)
		n += vcpu_stat(t->vcpus[i], "pf_taken");
	return n;
}

/* KVM_ENABLE_CAP(KVM_CAP_X86_HUGE_PAGE_COLLAPSE); 0 or -errno. */
static int __set_collapse(struct kvm_vm *vm, uint64_t flags, uint64_t mode,
			  uint64_t delay_ms, uint64_t batch)
{
	struct kvm_enable_cap cap = {
		.cap = KVM_CAP_X86_HUGE_PAGE_COLLAPSE,
		.args = { flags, mode, delay_ms, batch },
	};

	return ioctl(vm->fd, KVM_ENABLE_CAP, &cap) ? -errno : 0;
}

static void set_collapse(struct kvm_vm *vm, uint64_t flags, uint64_t mode,
			 uint64_t delay_ms, uint64_t batch)
{
	int r = __set_collapse(vm, flags, mode, delay_ms, batch);

	TEST_ASSERT(!r, "KVM_ENABLE_CAP(0x%lx, %lu, %lu, %lu): %s", flags, mode,
		    delay_ms, batch, strerror(-r));
}

/* KVM_X86_COLLAPSE_HUGE_PAGES; 0 or -errno. */
static int collapse_now(struct kvm_vm *vm, unsigned long arg)
{
	return ioctl(vm->fd, KVM_X86_COLLAPSE_HUGE_PAGES, arg) ? -errno : 0;
}

/* Wait up to @secs for the pending collapses to be done. */
static bool wait_no_pending(struct test_vm *t, int secs)
{
	uint64_t end = now_ns() + secs * 1000000000ULL;

	while (stat_of(t, "collapse_pending_slots")) {
		if (now_ns() > end)
			return false;
		usleep(1000);
	}
	return true;
}

/*
 * Wait up to @secs for a pending collapse to start, or for nothing to be
 * pending any more; returns whether a collapse is under way.
 */
static bool wait_started(struct test_vm *t, int secs)
{
	uint64_t end = now_ns() + secs * 1000000000ULL;

	while (stat_of(t, "collapse_pending_slots") &&
	       !stat_of(t, "collapse_started_slots") && now_ns() < end)
		usleep(100);
	return stat_of(t, "collapse_started_slots");
}

static void set_logging(struct test_vm *t, int i, bool on)
{
	vm_mem_region_set_flags(t->vm, slot_id(i),
				on ? KVM_MEM_LOG_DIRTY_PAGES : 0);
}

static uint64_t timed_stop(struct test_vm *t, int i)
{
	uint64_t start = now_ns();

	set_logging(t, i, false);
	return now_ns() - start;
}

/* Guest memory mapped huge, in 2MiB units (a 1GiB mapping counts 512). */
static uint64_t huge_2m(struct test_vm *t)
{
	return stat_of(t, "pages_2m") + HPAGE_PAGES * stat_of(t, "pages_1g");
}

/* Threads: in /proc/self/status, the number of threads of this process. */
static int nr_threads(void)
{
	FILE *f = fopen("/proc/self/status", "r");
	char line[128];
	int n = -1;

	TEST_ASSERT(f, "fopen(/proc/self/status)");
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "Threads: %d", &n) == 1)
			break;
	fclose(f);
	TEST_ASSERT(n > 0, "no Threads: in /proc/self/status");
	return n;
}

/*
 * One listing of /proc/self/task: the threads named @comm (all if NULL);
 * *@listed is how many threads it listed.
 */
static int list_threads(const char *comm, int *listed)
{
	char path[300], buf[32];
	struct dirent *d;
	DIR *dir = opendir("/proc/self/task");
	int n = 0;

	TEST_ASSERT(dir, "opendir(/proc/self/task)");
	*listed = 0;
	while ((d = readdir(dir))) {
		if (d->d_name[0] == '.')
			continue;
		++*listed;
		if (comm) {
			int fd, r;

			/*
			 * A thread that just exited may still be listed: its
			 * comm is gone (ENOENT) or its task is (ESRCH).
			 */
			snprintf(path, sizeof(path), "/proc/self/task/%s/comm",
				 d->d_name);
			fd = open(path, O_RDONLY);
			if (fd < 0 && (errno == ENOENT || errno == ESRCH))
				continue;
			TEST_ASSERT(fd >= 0, "open(%s): %s", path, strerror(errno));
			r = read(fd, buf, sizeof(buf) - 1);
			close(fd);
			if (r <= 0)
				continue;
			buf[r] = '\0';
			buf[strcspn(buf, "\n")] = '\0';
			if (strcmp(buf, comm))
				continue;
		}
		n++;
	}
	closedir(dir);
	return n;
}

/*
 * The threads of this process named @comm (all if NULL).  A readdir() of
 * /proc/self/task ends early, leaving out the threads after it, when the
 * thread it is at exits meanwhile (a vCPU thread that was joined may still
 * be exiting): only a listing of as many threads as the process had before
 * and after it is complete.
 */
static int count_threads(const char *comm)
{
	uint64_t end = now_ns() + 10000000000ULL;
	int n, listed, before;

	do {
		before = nr_threads();
		n = list_threads(comm, &listed);
		if (listed == before && nr_threads() == before)
			return n;
		usleep(1000);
	} while (now_ns() < end);
	TEST_FAIL("No complete listing of /proc/self/task in 10 s");
	return -1;
}

/*
 * The threads named @comm once those that are exiting are gone, 10 s at
 * most: vhost_task_stop() returns when the worker has left its loop, before
 * its thread has exited.
 */
static int threads_left(const char *comm)
{
	uint64_t end = now_ns() + 10000000000ULL;
	int n;

	while ((n = count_threads(comm)) && now_ns() < end)
		usleep(1000);
	return n;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(uint64_t *)a, y = *(uint64_t *)b;

	return x < y ? -1 : x > y;
}

/* Dirty every test slot with logging on, so that logging splits them all. */
static void split_all(struct test_vm *t, uint64_t iter)
{
	int i;

	for (i = 0; i < t->nr_slots; i++)
		set_logging(t, i, true);
	pass(t, iter, GUEST_WRITE);
	/* Dirty logging maps every page written with 4KiB SPTEs. */
	TEST_ASSERT_EQ(huge_2m(t), 0);
}

/*
 * The first pass: the guest writes all of the test slots, which are then
 * mapped huge as their backing allows.  Returns the 2MiB units mapped huge
 * (huge_2m()) and the 1GiB mappings, asserting that there are some, all of
 * them with hugetlb backing.
 */
static void map_huge(struct test_vm *t, uint64_t *before, uint64_t *gb_before)
{
	pass(t, 1, GUEST_WRITE);
	*before = huge_2m(t);
	*gb_before = stat_of(t, "pages_1g");
	/* Without huge pages to start with, nothing here would be tested. */
	TEST_ASSERT(*before > 0, "No 2MiB region of %lu MiB mapped huge",
		    test_size >> 20);
	if (backing == VM_MEM_SRC_ANONYMOUS_HUGETLB_1GB)
		TEST_ASSERT(*gb_before == test_size >> 30,
			    "%lu 1GiB mappings of %lu MiB of 1GiB pages",
			    *gb_before, test_size >> 20);
	else if (backing != VM_MEM_SRC_ANONYMOUS_THP)
		TEST_ASSERT_EQ(*before, test_size >> 21);
}

/*
 * knobs: module parameters and debugfs files reject bad input with the
 * documented errno and keep their value; new VMs take the parameters, a VM
 * keeps its values when the parameters change.  main() restores the
 * parameters after the subtest, however it ended.
 */
struct bad_input {
	const char *val;
	int err;
};

/* Bad input to the numeric knobs; out of range is EINVAL too. */
static const struct bad_input bad_uint[] = {
	{ "\n", EINVAL }, { "abc", EINVAL }, { "12abc", EINVAL },
	{ "-1", EINVAL }, { "1 2", EINVAL },
	{ " 5", EINVAL }, { "5 ", EINVAL }, { "1.5", EINVAL },
	{ "5\n\n", EINVAL }, { "0x", EINVAL }, { "08", EINVAL },
	{ "99999999999999999999", ERANGE }, { "4294967296", ERANGE },
};

static const struct bad_input bad_mode[] = {
	{ "\n", EINVAL }, { "syncx", EINVAL },
	{ "sync deferred", EINVAL }, { "SYNC", EINVAL }, { " sync", EINVAL },
	{ "sync ", EINVAL }, { "deferred\n\n", EINVAL }, { "1", EINVAL },
	{ "-1", EINVAL }, { "ondemand\nx", EINVAL }, { "sync,deferred", EINVAL },
	{ "[sync]", EINVAL },
};

static void check_bad(const char *path, const struct bad_input *bad, int n)
{
	char before[64], after[64];
	int i, r;

	read_file(path, before, sizeof(before));
	for (i = 0; i < n; i++) {
		r = write_file(path, bad[i].val);
		TEST_ASSERT(r == -bad[i].err, "%s <- '%s': got %d, want %d",
			    path, bad[i].val, r, -bad[i].err);
		read_file(path, after, sizeof(after));
		TEST_ASSERT(!strcmp(before, after),
			    "%s changed from '%s' to '%s' by bad input '%s'",
			    path, before, after, bad[i].val);
	}
}

static void check_good(const char *path, const char *val, const char *want)
{
	char buf[64];
	int r = write_file(path, val);

	TEST_ASSERT(!r, "%s <- '%s': %s", path, val, strerror(-r));
	read_file(path, buf, sizeof(buf));
	TEST_ASSERT(!strcmp(buf, want), "%s reads '%s' after '%s', want '%s'",
		    path, buf, val, want);
}

static void check_uint_knob(const char *path, unsigned int min,
			    unsigned int max)
{
	struct bad_input range[2] = { { NULL, EINVAL }, { "0", EINVAL } };
	char over[16], good[16], want[16];

	check_bad(path, bad_uint, ARRAY_SIZE(bad_uint));
	snprintf(over, sizeof(over), "%u", max + 1);
	range[0].val = over;
	check_bad(path, range, min ? 2 : 1);

	snprintf(good, sizeof(good), "%u", max);
	snprintf(want, sizeof(want), "%u\n", max);
	check_good(path, good, want);
	snprintf(good, sizeof(good), "%u\n", min);
	snprintf(want, sizeof(want), "%u\n", min);
	check_good(path, good, want);
	/* kstrtouint() syntax, as every other unsigned kernel knob. */
	check_good(path, "0x11", "17\n");
	check_good(path, "+18\n", "18\n");
}

static void test_knobs(void)
{
	char buf[64], path[128];
	struct test_vm *t;
	const char *now;
	int i;

	/* Module parameters. */
	check_bad(PARAM_DIR "collapse_mode", bad_mode, ARRAY_SIZE(bad_mode));
	check_good(PARAM_DIR "collapse_mode", "ondemand\n", "ondemand\n");
	check_good(PARAM_DIR "collapse_mode", "sync", "sync\n");
	check_uint_knob(PARAM_DIR "collapse_delay_ms", 0, 3600000);
	check_uint_knob(PARAM_DIR "collapse_batch", 1, 262144);
	check_uint_knob(PARAM_DIR "collapse_pause_pct", 0, 10000);

	/* A new VM takes the parameters as its defaults... */
	check_good(PARAM_DIR "collapse_mode", "ondemand", "ondemand\n");
	check_good(PARAM_DIR "collapse_delay_ms", "1234", "1234\n");
	check_good(PARAM_DIR "collapse_batch", "56", "56\n");
	check_good(PARAM_DIR "collapse_pause_pct", "78", "78\n");
	t = create_test_vm(4 << 20);
	read_file(vm_file(t->vm, "collapse_mode"), buf, sizeof(buf));
	TEST_ASSERT(!strcmp(buf, "sync deferred [ondemand]\n"),
		    "collapse_mode of a new VM reads '%s'", buf);
	TEST_ASSERT_EQ(vm_knob(t->vm, "collapse_delay_ms"), 1234);
	TEST_ASSERT_EQ(vm_knob(t->vm, "collapse_batch"), 56);
	TEST_ASSERT_EQ(vm_knob(t->vm, "collapse_pause_pct"), 78);

	/* ... and keeps them when the parameters change. */
	for (i = 0; i < ARRAY_SIZE(params); i++) {
		snprintf(path, sizeof(path), PARAM_DIR "%s", params[i]);
		TEST_ASSERT(!write_file(path, i ? "7" : "sync"), "%s", path);
	}
	TEST_ASSERT_EQ(vm_mode(t->vm), KVM_X86_COLLAPSE_ONDEMAND);
	TEST_ASSERT_EQ(vm_knob(t->vm, "collapse_delay_ms"), 1234);
	TEST_ASSERT_EQ(vm_knob(t->vm, "collapse_batch"), 56);
	TEST_ASSERT_EQ(vm_knob(t->vm, "collapse_pause_pct"), 78);

	/* Per-VM debugfs files. */
	check_bad(vm_file(t->vm, "collapse_mode"), bad_mode,
		  ARRAY_SIZE(bad_mode));
	check_good(vm_file(t->vm, "collapse_mode"), "sync\n",
		   "[sync] deferred ondemand\n");
	check_good(vm_file(t->vm, "collapse_mode"), "deferred",
		   "sync [deferred] ondemand\n");
	check_uint_knob(vm_file(t->vm, "collapse_delay_ms"), 0, 3600000);
	check_uint_knob(vm_file(t->vm, "collapse_batch"), 1, 262144);
	check_uint_knob(vm_file(t->vm, "collapse_pause_pct"), 0, 10000);

	/*
	 * collapse_now takes 1 and nothing else; a bad write must not collapse
	 * the slot left pending in ondemand mode.
	 */
	vm_set(t->vm, "collapse_mode", "ondemand");
	pass(t, 1, GUEST_WRITE);
	set_logging(t, 0, true);
	pass(t, 2, GUEST_WRITE);
	set_logging(t, 0, false);
	TEST_ASSERT_EQ(stat_of(t, "collapse_pending_slots"), 1);
	now = vm_file(t->vm, "collapse_now");
	{
		static const char * const bad_now[] = {
			"\n", "0", "2", "yes", "1 1", "-1", "11", "1x",
			"4294967297", "99999999999999999999", " 1",
		};

		for (i = 0; i < ARRAY_SIZE(bad_now); i++) {
			int r = write_file(now, bad_now[i]);

			TEST_ASSERT(r == -EINVAL || r == -ERANGE,
				    "collapse_now <- '%s': %d", bad_now[i], r);
		}
	}
	usleep(200000);
	TEST_ASSERT_EQ(stat_of(t, "collapse_pending_slots"), 1);
	TEST_ASSERT_EQ(stat_of(t, "collapse_runs"), 0);
	vm_set(t->vm, "collapse_now", "1\n");
	TEST_ASSERT(wait_no_pending(t, 300), "collapse_now did nothing");
	TEST_ASSERT_EQ(stat_of(t, "collapse_runs"), 1);
	free_test_vm(t);
}

/* The VM's collapse settings, as debugfs shows them. */
struct settings {
	int mode;
	unsigned int delay_ms, batch;
};

static struct settings get_settings(struct kvm_vm *vm)
{
	return (struct settings) {
		.mode = vm_mode(vm),
		.delay_ms = vm_knob(vm, "collapse_delay_ms"),
		.batch = vm_knob(vm, "collapse_batch"),
	};
}

static void check_settings(struct kvm_vm *vm, struct settings want,
			   const char *what)
{
	struct settings got = get_settings(vm);

	TEST_ASSERT(got.mode == want.mode && got.delay_ms == want.delay_ms &&
		    got.batch == want.batch,
		    "%s: mode %d delay %u batch %u, want %d %u %u", what,
		    got.mode, got.delay_ms, got.batch, want.mode, want.delay_ms,
		    want.batch);
}

/*
 * abi: the capability and the ioctl.  Every bad argument fails with EINVAL
 * and changes nothing: neither a setting nor a pending collapse.
 */
static void test_abi(void)
{
	static const struct {
		uint64_t flags, mode, delay_ms, batch;
		const char *why;
	} bad[] = {
		{ 0, 0, 0, 0, "nothing to set" },
		{ 1 << 3, 0, 0, 0, "unknown flag" },
		{ ~0ULL, 0, 0, 0, "every flag" },
		{ KVM_X86_COLLAPSE_SET_MODE, 3, 0, 0, "no such mode" },
		{ KVM_X86_COLLAPSE_SET_MODE, ~0ULL, 0, 0, "mode -1" },
		{ KVM_X86_COLLAPSE_SET_MODE, 1ULL << 32, 0, 0, "mode 2^32" },
		{ KVM_X86_COLLAPSE_SET_DELAY, 0, 3600001, 0, "delay over 1h" },
		{ KVM_X86_COLLAPSE_SET_DELAY, 0, 1ULL << 32, 0, "delay 2^32" },
		{ KVM_X86_COLLAPSE_SET_BATCH, 0, 0, 0, "batch 0" },
		{ KVM_X86_COLLAPSE_SET_BATCH, 0, 0, 262145, "batch too big" },
		{ KVM_X86_COLLAPSE_SET_BATCH, 0, 0, (1ULL << 32) | 1,
		  "batch 2^32 + 1" },
		{ KVM_X86_COLLAPSE_SET_DELAY, 1, 5, 0, "mode without its flag" },
		{ KVM_X86_COLLAPSE_SET_MODE, 1, 5, 0, "delay without its flag" },
		{ KVM_X86_COLLAPSE_SET_MODE, 1, 0, 5, "batch without its flag" },
		{ KVM_X86_COLLAPSE_VALID_FLAGS, KVM_X86_COLLAPSE_ONDEMAND, 77, 0,
		  "all but the last valid" },
	};
	static const unsigned long bad_arg[] = {
		1, 2, 3, 0x80, 1UL << 31, 1UL << 32, 1UL << 63, ~0UL,
		0xdeadbeef, 0x1000,
	};
	struct kvm_enable_cap cap = { .cap = KVM_CAP_X86_HUGE_PAGE_COLLAPSE };
	uint64_t before, regions, runs;
	struct settings s;
	struct test_vm *t;
	int i, r, modes;

	modes = kvm_check_cap(KVM_CAP_X86_HUGE_PAGE_COLLAPSE);
	TEST_ASSERT_EQ(modes, (1 << KVM_X86_COLLAPSE_SYNC) |
		       (1 << KVM_X86_COLLAPSE_DEFERRED) |
		       (1 << KVM_X86_COLLAPSE_ONDEMAND));

	t = create_test_vm(race_size);
	TEST_ASSERT_EQ(vm_check_cap(t->vm, KVM_CAP_X86_HUGE_PAGE_COLLAPSE),
		       modes);

	/* Each setting alone, then all three at once. */
	set_collapse(t->vm, KVM_X86_COLLAPSE_SET_MODE,
		     KVM_X86_COLLAPSE_ONDEMAND, 0, 0);
	s = get_settings(t->vm);
	TEST_ASSERT_EQ(s.mode, KVM_X86_COLLAPSE_ONDEMAND);
	set_collapse(t->vm, KVM_X86_COLLAPSE_SET_DELAY, 0, 1234, 0);
	s.delay_ms = 1234;
	check_settings(t->vm, s, "SET_DELAY 1234");
	set_collapse(t->vm, KVM_X86_COLLAPSE_SET_BATCH, 0, 0, 5);
	s.batch = 5;
	check_settings(t->vm, s, "SET_BATCH 5");
	set_collapse(t->vm, KVM_X86_COLLAPSE_VALID_FLAGS,
		     KVM_X86_COLLAPSE_DEFERRED, 3600000, 262144);
	s = (struct settings) { KVM_X86_COLLAPSE_DEFERRED, 3600000, 262144 };
	check_settings(t->vm, s, "all three");

	for (i = 0; i < ARRAY_SIZE(bad); i++) {
		r = __set_collapse(t->vm, bad[i].flags, bad[i].mode,
				   bad[i].delay_ms, bad[i].batch);
		TEST_ASSERT(r == -EINVAL, "KVM_ENABLE_CAP, %s: %d", bad[i].why, r);
		check_settings(t->vm, s, bad[i].why);
	}
	cap.flags = 1;
	cap.args[0] = KVM_X86_COLLAPSE_SET_BATCH;
	cap.args[3] = 8;
	TEST_ASSERT(ioctl(t->vm->fd, KVM_ENABLE_CAP, &cap) && errno == EINVAL,
		    "KVM_ENABLE_CAP with cap.flags 1");
	check_settings(t->vm, s, "cap.flags 1");

	/*
	 * The ioctl collapses in the calling thread: in ondemand mode the
	 * worker does nothing, yet nothing is pending once it returns.
	 */
	set_collapse(t->vm, KVM_X86_COLLAPSE_SET_MODE | KVM_X86_COLLAPSE_SET_BATCH,
		     KVM_X86_COLLAPSE_ONDEMAND, 0, 4);
	TEST_ASSERT_EQ(collapse_now(t->vm, 0), 0);
	pass(t, 1, GUEST_WRITE);
	before = huge_2m(t);
	TEST_ASSERT(before > 0, "No huge page mapped: no THP or hugetlb?");
	split_all(t, 2);
	set_logging(t, 0, false);
	TEST_ASSERT_EQ(stat_of(t, "collapse_pending_slots"), 1);

	for (i = 0; i < ARRAY_SIZE(bad_arg); i++) {
		r = collapse_now(t->vm, bad_arg[i]);
		TEST_ASSERT(r == -EINVAL, "KVM_X86_COLLAPSE_HUGE_PAGES(0x%lx): %d",
			    bad_arg[i], r);
	}
	usleep(100000);
	TEST_ASSERT_EQ(stat_of(t, "collapse_pending_slots"), 1);
	TEST_ASSERT_EQ(stat_of(t, "collapse_runs"), 0);
	TEST_ASSERT_EQ(stat_of(t, "collapse_regions"), 0);

	TEST_ASSERT_EQ(collapse_now(t->vm, 0), 0);
	TEST_ASSERT_EQ(stat_of(t, "collapse_pending_slots"), 0);
	runs = stat_of(t, "collapse_runs");
	regions = stat_of(t, "collapse_regions");
	TEST_ASSERT_EQ(runs, 1);
	/* Each region mapped huge before logging had its 4KiB SPTEs zapped. */
	TEST_ASSERT_EQ(regions, before);
	pass(t, 2, GUEST_CHECK);
	TEST_ASSERT_EQ(huge_2m(t), before);
	free_test_vm(t);
}

/*
 * worker: no memslot ioctl creates a thread; KVM_RUN creates the worker of a
 * VM in a lazy mode (a VM switched to one later gets it at its next KVM_RUN),
 * never of a sync VM; and it goes away with the VM, as its debugfs does.
 */
static void test_worker(void)
{
	struct test_vm *t = create_test_vm(race_size);
	int mode = vm_mode(t->vm), threads = count_threads(NULL);
	bool lazy = mode != KVM_X86_COLLAPSE_SYNC;
	struct stat st;

	TEST_ASSERT_EQ(count_threads("kvm-collapse"), 0);

	/* Before any KVM_RUN: logging on and off adds no thread... */
	set_logging(t, 0, true);
	set_logging(t, 0, false);
	TEST_ASSERT_EQ(count_threads(NULL), threads);
	/* ... and the stop collapsed in the ioctl, even in a lazy mode. */
	TEST_ASSERT_EQ(stat_of(t, "collapse_pending_slots"), 0);
	TEST_ASSERT_EQ(stat_of(t, "collapse_runs"), 1);
	TEST_ASSERT_EQ(stat_of(t, "collapse_sync_fallbacks"), lazy);

	pass(t, 1, GUEST_WRITE);
	TEST_ASSERT_EQ(count_threads("kvm-collapse"), lazy);
	if (!lazy) {
		/* A sync VM switched to a lazy mode: its next KVM_RUN. */
		set_collapse(t->vm, KVM_X86_COLLAPSE_SET_MODE,
			     KVM_X86_COLLAPSE_ONDEMAND, 0, 0);
		TEST_ASSERT_EQ(count_threads("kvm-collapse"), 0);
		pass(t, 2, GUEST_READ);
		TEST_ASSERT_EQ(count_threads("kvm-collapse"), 1);
	}

	/* With the worker, a stop leaves the slot pending. */
	set_collapse(t->vm, KVM_X86_COLLAPSE_SET_MODE,
		     KVM_X86_COLLAPSE_ONDEMAND, 0, 0);
	split_all(t, 3);
	set_logging(t, 0, false);
	TEST_ASSERT_EQ(stat_of(t, "collapse_pending_slots"), 1);
	TEST_ASSERT_EQ(stat_of(t, "collapse_sync_fallbacks"), lazy);

	TEST_ASSERT(!stat(vm_dir(t->vm), &st), "no %s", vm_dir(t->vm));
	{
		char dir[128];

		snprintf(dir, sizeof(dir), "%s", vm_dir(t->vm));
		destroy_test_vm(t);
		TEST_ASSERT_EQ(threads_left("kvm-collapse"), 0);
		TEST_ASSERT(stat(dir, &st) && errno == ENOENT,
			    "%s still there after the VM was destroyed", dir);
	}
}

/*
 * stoptime: the fastest of nr_stops (-n, default 5) stops of a 2MiB slot and
 * of a test_size slot, both split by a full dirty pass first, measured
 * alternately in one VM.  Noise only ever adds time (interrupts, RCU grace
 * periods, the other vCPU threads), so the minimum is the estimate least
 * hurt by it.
 *
 * In sync mode the large stop zaps test_size / 2MiB times more SPTEs (512x
 * for 1GiB, ~100x in time measured under TCG): it must cost more than 8x the
 * small one.  In the lazy modes the part of the large stop that grows with
 * the size, large - small, must be under a tenth of what collapsing the
 * slots costs (collapse_time_ns of the collapse that ends the test, in the
 * same VM): it is ~0 where sync mode's is all of it.
 */
static void test_stoptime(void)
{
	uint64_t sizes[] = { SMALL_SIZE, test_size, 0 };
	struct test_vm *t = create_vm(sizes);
	int mode = vm_mode(t->vm);
	uint64_t small[MAX_STOPS], big[MAX_STOPS], ms, mb, collapse_ns;
	int i;

	/* The lazy modes must not collapse while this measures. */
	vm_set(t->vm, "collapse_delay_ms", "3600000");
	pass(t, 1, GUEST_WRITE);
	for (i = 0; i < nr_stops; i++) {
		split_all(t, i + 2);
		if (i & 1) {
			big[i] = timed_stop(t, 1);
			small[i] = timed_stop(t, 0);
		} else {
			small[i] = timed_stop(t, 0);
			big[i] = timed_stop(t, 1);
		}
	}
	qsort(small, nr_stops, sizeof(small[0]), cmp_u64);
	qsort(big, nr_stops, sizeof(big[0]), cmp_u64);
	ms = small[0];
	mb = big[0];
	ksft_print_msg("stoptime [%s]: 2MiB %lu us, %lu MiB %lu us, ratio %.1f\n",
		       mode_names[mode], ms / 1000, test_size >> 20, mb / 1000,
		       (double)mb / ms);
	if (mode == KVM_X86_COLLAPSE_SYNC) {
		TEST_ASSERT(mb > 8 * ms,
			    "sync: stopping %lu MiB (%lu ns) should cost > 8x 2MiB (%lu ns)",
			    test_size >> 20, mb, ms);
		free_test_vm(t);
		return;
	}

	TEST_ASSERT_EQ(stat_of(t, "collapse_pending_slots"), 2);
	TEST_ASSERT_EQ(collapse_now(t->vm, 0), 0);
	TEST_ASSERT_EQ(stat_of(t, "collapse_pending_slots"), 0);
	collapse_ns = stat_of(t, "collapse_time_ns");
	ksft_print_msg("stoptime [%s]: collapsing both slots held mmu_lock %lu us\n",
		       mode_names[mode], collapse_ns / 1000);
	TEST_ASSERT(mb < ms || mb - ms < collapse_ns / 10,
		    "%s: stopping %lu MiB (%lu ns) vs 2MiB (%lu ns): the difference is over 1/10 of the collapse (%lu ns)",
		    mode_names[mode], test_size >> 20, mb, ms, collapse_ns);
	free_test_vm(t);
}

/*
 * restore: huge pages are back to exactly the count before logging once the
 * collapse ran and the guest touched its memory again, none while logging;
 * in deferred mode not before collapse_delay_ms and not long after it, in
 * ondemand mode not before collapse_now.  With 1GiB hugetlb backing, the
 * 1GiB mappings come back.  The guest then checks all it wrote.
 */
static void test_restore(void)
{
	const uint64_t delay_ms = 3000;
	struct test_vm *t = create_test_vm(test_size);
	int mode = vm_mode(t->vm);
	uint64_t before, gb_before, after, regions, holds, t_stop, t_done;
	unsigned int batch;

	set_collapse(t->vm, KVM_X86_COLLAPSE_SET_DELAY, 0, delay_ms, 0);
	if (restore_batch)
		vm_set(t->vm, "collapse_batch", restore_batch);
	batch = vm_knob(t->vm, "collapse_batch");
	map_huge(t, &before, &gb_before);

	split_all(t, 2);
	t_stop = now_ns();
	set_logging(t, 0, false);
	if (mode == KVM_X86_COLLAPSE_SYNC) {
		TEST_ASSERT_EQ(stat_of(t, "collapse_pending_slots"), 0);
		TEST_ASSERT_EQ(stat_of(t, "collapse_runs"), 1);
	} else {
		/* Lazy: the ioctl only left the slot pending. */
		TEST_ASSERT_EQ(stat_of(t, "collapse_pending_slots"), 1);
		TEST_ASSERT_EQ(stat_of(t, "collapse_runs"), 0);
	}

	if (mode == KVM_X86_COLLAPSE_ONDEMAND) {
		/* Nothing happens until asked, however long. */
		usleep((delay_ms + 1000) * 1000);
		pass(t, 2, GUEST_CHECK);
		TEST_ASSERT_EQ(stat_of(t, "collapse_pending_slots"), 1);
		TEST_ASSERT_EQ(stat_of(t, "collapse_runs"), 0);
		TEST_ASSERT_EQ(huge_2m(t), 0);
		vm_set(t->vm, "collapse_now", "1");
	}
	TEST_ASSERT(wait_no_pending(t, 300), "Collapse still pending after 300 s");
	t_done = now_ns();
	TEST_ASSERT_EQ(stat_of(t, "collapse_runs"), 1);
	TEST_ASSERT_EQ(stat_of(t, "collapse_cancelled"), 0);
	regions = stat_of(t, "collapse_regions");
	ksft_print_msg("restore [%s]: %lu regions collapsed %lu ms after the stop\n",
		       mode_names[mode], regions, (t_done - t_stop) / 1000000);
	ksft_print_msg("restore [%s]: mmu_lock held %lu us, batch %u, longest hold %lu us\n",
		       mode_names[mode], stat_of(t, "collapse_time_ns") / 1000,
		       batch, stat_of(t, "collapse_max_hold_ns") / 1000);
	/* Each region mapped huge before logging is collapsed, once. */
	TEST_ASSERT_EQ(regions, gb_before ? gb_before : before);
	TEST_ASSERT(stat_of(t, "collapse_max_hold_ns") > 0 &&
		    stat_of(t, "collapse_time_ns") >= stat_of(t, "collapse_max_hold_ns"),
		    "Collapse time statistics inconsistent");
	if (mode == KVM_X86_COLLAPSE_DEFERRED) {
		/*
		 * Not before the delay (less a jiffy of rounding), and within
		 * it plus ten times what the collapse held mmu_lock, plus 5 s
		 * for scheduling under emulation.
		 */
		TEST_ASSERT(t_done - t_stop >= (delay_ms - 20) * 1000000,
			    "Collapsed %lu ms after the stop, before collapse_delay_ms %lu",
			    (t_done - t_stop) / 1000000, delay_ms);
		TEST_ASSERT(t_done - t_stop <= (delay_ms + 5000) * 1000000 +
			    10 * stat_of(t, "collapse_time_ns"),
			    "Collapsed %lu ms after the stop, collapse_delay_ms %lu",
			    (t_done - t_stop) / 1000000, delay_ms);
	}
	/*
	 * The worker takes mmu_lock once per collapse_batch regions, and every
	 * region here was split: with 16 holds or more, the longest is about
	 * 1/16 of them all or less.  A quarter leaves room for a hold
	 * stretched by interrupts, and fails if the collapse was one hold.
	 * Not with 1GiB backing: a 1GiB region is zapped in one go.
	 */
	holds = DIV_ROUND_UP(test_size >> 21, batch);
	if (mode != KVM_X86_COLLAPSE_SYNC && holds >= 16 && !gb_before)
		TEST_ASSERT(stat_of(t, "collapse_max_hold_ns") * 4 <=
			    stat_of(t, "collapse_time_ns"),
			    "%s: longest hold %lu ns of %lu ns in %lu batches",
			    mode_names[mode], stat_of(t, "collapse_max_hold_ns"),
			    stat_of(t, "collapse_time_ns"), holds);

	pass(t, 2, GUEST_CHECK);
	after = huge_2m(t);
	ksft_print_msg("restore [%s]: huge: %lu before logging, 0 logging, %lu after\n",
		       mode_names[mode], before, after);
	ksft_print_msg("restore [%s]: 1GiB mappings: %lu before, %lu after\n",
		       mode_names[mode], gb_before, stat_of(t, "pages_1g"));
	TEST_ASSERT_EQ(after, before);
	/* 1GiB backing: the 1GiB mappings come back, not 2MiB ones. */
	TEST_ASSERT_EQ(stat_of(t, "pages_1g"), gb_before);
	free_test_vm(t);
}

/*
 * Check the pass that wrote @iter to every page of the test slots, from the
 * host: each page holds what the guest wrote, and, if logging was on, each
 * page is in its slot's dirty log (which this clears).
 */
static void check_pass(struct test_vm *t, uint64_t iter, bool logging)
{
	uint64_t i, first, npages, missed;
	uint64_t *hva;
	int s;

	for (s = 0; s < t->nr_slots; s++) {
		first = (t->slot_gpa[s] - TEST_GPA) / PAGE_SIZE;
		npages = t->slot_size[s] / PAGE_SIZE;
		hva = addr_gpa2hva(t->vm, t->slot_gpa[s]);
		missed = 0;
		if (logging)
			kvm_vm_get_dirty_log(t->vm, slot_id(s), t->bitmap);
		for (i = 0; i < npages; i++) {
			uint64_t v = hva[i * PAGE_SIZE / sizeof(*hva)];
			uint64_t want = iter << 32 | (first + i);

			TEST_ASSERT(v == want,
				    "Slot %d page %lu holds 0x%lx, the guest wrote 0x%lx",
				    slot_id(s), i, v, want);
			if (logging && !test_bit(i, t->bitmap))
				missed++;
		}
		TEST_ASSERT(!missed,
			    "Slot %d: %lu of %lu written pages missing from the dirty log",
			    slot_id(s), missed, npages);
	}
}

/*
 * inplace: the slot is mapped huge, split by logging with every page
 * written, then logging stops and the collapse runs as the mode says, with
 * the vCPUs idle.  The TDP MMU must have mapped every huge page again
 * (pages_2m, pages_1g as before logging) with at most one remote TLB flush
 * per hold of mmu_lock (collapse_holds; zapping flushed once per region),
 * and in the lazy modes at most collapse_batch regions per hold; the
 * guest's check of its memory must then take almost no page fault (zapping
 * takes one per region or more).  The shadow MMU zaps: nothing is mapped
 * huge until the guest's check faults the huge pages back.  Then logging
 * is enabled again and the guest writes every page: each must be in the
 * dirty log, with what the guest wrote, and split again.
 *
 * Before that, the guest executes code in the slot: with the NX huge page
 * mitigation on (-x sets kvm.nx_huge_pages=force), huge SPTEs are not
 * executable, so that this splits a huge page, whether recovered in place
 * or faulted back in; with it off, it changes nothing.
 */
static void test_inplace(void)
{
	struct test_vm *t = create_test_vm(test_size);
	bool in_place = kvm_is_tdp_enabled() && get_kvm_param_bool("tdp_mmu");
	int mode = vm_mode(t->vm);
	uint64_t before, gb_before, regions, flushes, holds, faults;
	uint8_t *code;
	unsigned int batch;
	char nx[16];
	bool nx_on;

	if (nx_force) {
		TEST_ASSERT(!write_file(PARAM_DIR "nx_huge_pages", "force"),
			    "Cannot set kvm.nx_huge_pages=force");
		/* It zapped the SPTEs of every VM: create this one after. */
		free_test_vm(t);
		t = create_test_vm(test_size);
	}
	read_file(PARAM_DIR "nx_huge_pages", nx, sizeof(nx));
	nx[strcspn(nx, "\n")] = '\0';
	nx_on = nx[0] == 'Y';

	set_collapse(t->vm, KVM_X86_COLLAPSE_SET_DELAY, 0, 100, 0);
	batch = vm_knob(t->vm, "collapse_batch");
	map_huge(t, &before, &gb_before);

	split_all(t, 2);
	flushes = stat_of(t, "remote_tlb_flush_requests");
	holds = stat_of(t, "collapse_holds");
	set_logging(t, 0, false);
	if (mode == KVM_X86_COLLAPSE_ONDEMAND)
		TEST_ASSERT_EQ(collapse_now(t->vm, 0), 0);
	TEST_ASSERT(wait_no_pending(t, 300), "Collapse still pending after 300 s");
	flushes = stat_of(t, "remote_tlb_flush_requests") - flushes;
	holds = stat_of(t, "collapse_holds") - holds;
	regions = stat_of(t, "collapse_regions");
	TEST_ASSERT_EQ(regions, gb_before ? gb_before : before);

	ksft_print_msg("inplace [%s]: %s MMU, %lu regions, %lu holds, %lu TLB flushes, batch %u\n",
		       mode_names[mode], in_place ? "TDP" : "shadow", regions,
		       holds, flushes, batch);
	ksft_print_msg("inplace [%s]: huge: %lu before logging, 0 logging, %lu after\n",
		       mode_names[mode], before, huge_2m(t));
	if (in_place) {
		TEST_ASSERT_EQ(huge_2m(t), before);
		TEST_ASSERT_EQ(stat_of(t, "pages_1g"), gb_before);
		/* The vCPUs are idle: every flush is the collapse's. */
		TEST_ASSERT(flushes <= holds,
			    "%lu remote TLB flushes in %lu holds for %lu regions",
			    flushes, holds, regions);
	} else {
		TEST_ASSERT_EQ(huge_2m(t), 0);
	}
	TEST_ASSERT(holds >= 1, "No hold of mmu_lock counted");
	if (mode != KVM_X86_COLLAPSE_SYNC)
		TEST_ASSERT(holds >= DIV_ROUND_UP(regions, batch),
			    "%lu regions in %lu holds, batch %u", regions, holds,
			    batch);

	faults = vcpu_faults(t);
	pass(t, 2, GUEST_CHECK);
	faults = vcpu_faults(t) - faults;
	ksft_print_msg("inplace [%s]: the guest's check took %lu page faults\n",
		       mode_names[mode], faults);
	TEST_ASSERT_EQ(huge_2m(t), before);
	/* Counted in 2MiB regions: a 1GiB one recovered in place is 512. */
	if (in_place)
		TEST_ASSERT(faults * 8 < before,
			    "%lu page faults after recovering %lu regions (%lu MiB) in place",
			    faults, regions, before * 2);
	else
		TEST_ASSERT(faults >= regions,
			    "%lu page faults after zapping %lu regions", faults,
			    regions);

	/* A 'ret' where vCPU 0 calls, in the first 2MiB region. */
	code = addr_gpa2hva(t->vm, TEST_GPA + EXEC_OFFSET);
	*code = 0xc3;
	pass(t, 2, GUEST_EXEC);
	ksft_print_msg("inplace [%s]: nx_huge_pages %s: huge: %lu after executing in the slot\n",
		       mode_names[mode], nx, huge_2m(t));
	if (nx_on)
		TEST_ASSERT(huge_2m(t) < before,
			    "Code ran from a huge page with NX huge pages on");
	else
		TEST_ASSERT_EQ(huge_2m(t), before);

	/* Logging again on the recovered slot: no write may be missed. */
	set_logging(t, 0, true);
	pass(t, 3, GUEST_WRITE);
	check_pass(t, 3, true);
	TEST_ASSERT_EQ(huge_2m(t), 0);
	free_test_vm(t);
}

/*
 * starve (deferred): slot 1 stops logging; slot 0 then stops and starts
 * logging again every third of collapse_delay_ms for four delays.  Slot 1
 * must be collapsed at its own due time, not postponed by slot 0's stops:
 * not before the delay, and within it plus 1 s and ten times what its
 * collapse held mmu_lock.  Each of slot 0's stops is cancelled.
 */
static void test_starve(void)
{
	const uint64_t delay_ms = 1000;
	uint64_t sizes[] = { SMALL_SIZE, race_size, 0 };
	struct test_vm *t = create_vm(sizes);
	uint64_t t_stop, t_done = 0, end, next, before, stops = 0;

	TEST_ASSERT(vm_mode(t->vm) == KVM_X86_COLLAPSE_DEFERRED,
		    "starve needs deferred mode (kvm.collapse_mode=deferred)");
	set_collapse(t->vm, KVM_X86_COLLAPSE_SET_DELAY, 0, delay_ms, 0);
	pass(t, 1, GUEST_WRITE);
	before = huge_2m(t);
	split_all(t, 2);

	t_stop = now_ns();
	set_logging(t, 1, false);
	end = t_stop + 4 * delay_ms * 1000000;
	next = t_stop;
	while (now_ns() < end) {
		if (now_ns() >= next) {
			if (stops)
				set_logging(t, 0, true);
			set_logging(t, 0, false);
			stops++;
			next += delay_ms * 1000000 / 3;
		}
		if (!t_done && stat_of(t, "collapse_runs"))
			t_done = now_ns();
		usleep(1000);
	}
	set_logging(t, 0, true);

	ksft_print_msg("starve: slot 1 collapsed %lu ms after its stop (delay %lu ms)\n",
		       t_done ? (t_done - t_stop) / 1000000 : 0, delay_ms);
	ksft_print_msg("starve: slot 0 stopped logging %lu times meanwhile\n",
		       stops);
	TEST_ASSERT(t_done, "Slot 1 not collapsed %lu ms after its stop",
		    4 * delay_ms);
	TEST_ASSERT(t_done - t_stop >= (delay_ms - 20) * 1000000,
		    "Slot 1 collapsed %lu ms after its stop, before the delay",
		    (t_done - t_stop) / 1000000);
	TEST_ASSERT(t_done - t_stop <= (delay_ms + 1000) * 1000000 +
		    10 * stat_of(t, "collapse_time_ns"),
		    "Slot 1 collapsed %lu ms after its stop: postponed",
		    (t_done - t_stop) / 1000000);
	TEST_ASSERT_EQ(stat_of(t, "collapse_runs"), 1);
	TEST_ASSERT_EQ(stat_of(t, "collapse_cancelled"), stops);
	TEST_ASSERT_EQ(stat_of(t, "collapse_pending_slots"), 0);
	/* Slot 0 logs again: what is huge now is slot 1's collapse. */
	pass(t, 2, GUEST_CHECK);
	TEST_ASSERT(huge_2m(t) > 0 && huge_2m(t) <= before,
		    "%lu regions mapped huge, %lu before logging", huge_2m(t),
		    before);
	TEST_ASSERT_EQ(stat_of(t, "collapse_regions"), huge_2m(t));
	free_test_vm(t);
}

/* Trace events of this process's VMs, see trace_events(). */
static const char *tracefs;

static void trace_write(const char *file, const char *val)
{
	char path[256];
	int r;

	snprintf(path, sizeof(path), "%s/%s", tracefs, file);
	r = write_file(path, val);
	TEST_ASSERT(!r, "%s <- %s: %s", path, val, strerror(-r));
}

/* Empty the trace buffer (an open with O_TRUNC does). */
static void trace_clear(void)
{
	char path[256];
	int fd;

	snprintf(path, sizeof(path), "%s/trace", tracefs);
	fd = open(path, O_WRONLY | O_TRUNC);
	TEST_ASSERT(fd >= 0, "open(%s): %s", path, strerror(errno));
	close(fd);
}

static void trace_start(void)
{
	static const char * const dirs[] = {
		"/sys/kernel/tracing", "/sys/kernel/debug/tracing",
	};
	char filter[32], path[256];
	int i;

	for (i = 0; !tracefs && i < ARRAY_SIZE(dirs); i++) {
		snprintf(path, sizeof(path),
			 "%s/events/kvmmmu/kvm_mmu_collapse_start", dirs[i]);
		if (!access(path, F_OK))
			tracefs = dirs[i];
	}
	__TEST_REQUIRE(tracefs, "tracefs with kvmmmu events not mounted");
	snprintf(filter, sizeof(filter), "pid == %d", getpid());
	trace_write("events/kvmmmu/kvm_mmu_collapse_start/filter", filter);
	trace_write("events/kvmmmu/kvm_mmu_collapse_end/filter", filter);
	trace_write("events/kvmmmu/kvm_mmu_collapse_start/enable", "1");
	trace_write("events/kvmmmu/kvm_mmu_collapse_end/enable", "1");
	trace_clear();
}

static void trace_stop(void)
{
	trace_write("events/kvmmmu/kvm_mmu_collapse_start/enable", "0");
	trace_write("events/kvmmmu/kvm_mmu_collapse_end/enable", "0");
}

/* What the trace holds for slot @id of address space 0. */
struct slot_trace {
	int starts, ends, cancelled;
	bool end_before_start;
	uint64_t end_regions;
};

static struct slot_trace trace_slot(int id)
{
	struct slot_trace st = {};
	char path[256], line[512];
	unsigned long long regions;
	int as_id, slot;
	FILE *f;
	char *p;

	snprintf(path, sizeof(path), "%s/trace", tracefs);
	f = fopen(path, "r");
	TEST_ASSERT(f, "open %s", path);
	while (fgets(line, sizeof(line), f)) {
		p = strstr(line, "kvm_mmu_collapse_start: ");
		if (p && sscanf(p, "kvm_mmu_collapse_start: vm %*d as_id %d slot %d",
				&as_id, &slot) == 2 && !as_id && slot == id) {
			st.starts++;
			continue;
		}
		p = strstr(line, "kvm_mmu_collapse_end: ");
		if (p && sscanf(p, "kvm_mmu_collapse_end: vm %*d as_id %d slot %d regions %llu",
				&as_id, &slot, &regions) == 3 && !as_id && slot == id) {
			st.ends++;
			st.end_before_start |= st.ends > st.starts;
			st.end_regions = regions;
			st.cancelled += !!strstr(p, "cancelled");
		}
	}
	fclose(f);
	return st;
}

static void no_op(int sig)
{
}

struct interrupted {
	struct kvm_vm *vm;
	int r;
};

static void *collapse_thread(void *arg)
{
	struct interrupted *x = arg;

	x->r = collapse_now(x->vm, 0);
	return NULL;
}

/*
 * pace (lazy modes): with collapse_pause_pct, the worker pauses after each
 * batch for that share of the time the batch took.  At 10000%, one region per
 * batch, the collapse of a -r slot by the worker (at the stop in deferred
 * mode, at collapse_now in ondemand mode) lasts at least 100 times what all
 * but its longest batch held mmu_lock; with no pause, a small multiple of it.
 * A VM destroyed while its worker pauses goes away.
 */
static void test_pace(void)
{
	struct test_vm *t = create_test_vm(race_size);
	uint64_t before, gb_before, h0, holds0, start, wall, hold, holds;
	int mode = vm_mode(t->vm);

	TEST_ASSERT(mode != KVM_X86_COLLAPSE_SYNC,
		    "pace needs a lazy mode (kvm.collapse_mode)");
	set_collapse(t->vm, KVM_X86_COLLAPSE_SET_DELAY | KVM_X86_COLLAPSE_SET_BATCH,
		     0, 0, 1);
	vm_set(t->vm, "collapse_pause_pct", "10000");
	map_huge(t, &before, &gb_before);
	split_all(t, 2);

	h0 = stat_of(t, "collapse_time_ns");
	holds0 = stat_of(t, "collapse_holds");
	start = now_ns();
	set_logging(t, 0, false);
	if (mode == KVM_X86_COLLAPSE_ONDEMAND)
		vm_set(t->vm, "collapse_now", "1");
	TEST_ASSERT(wait_no_pending(t, 600), "No collapse in 600 s");
	wall = now_ns() - start;
	hold = stat_of(t, "collapse_time_ns") - h0;
	holds = stat_of(t, "collapse_holds") - holds0;
	ksft_print_msg("pace: %lu batches held mmu_lock %lu us (at most %lu us), took %lu us\n",
		       holds, hold / 1000,
		       stat_of(t, "collapse_max_hold_ns") / 1000, wall / 1000);
	TEST_ASSERT(holds >= 8, "%lu batches of one region: want 8 or more",
		    holds);
	TEST_ASSERT(wall >= 100 * (hold - stat_of(t, "collapse_max_hold_ns")),
		    "The paced collapse took %lu us for %lu us of batches",
		    wall / 1000, hold / 1000);
	pass(t, 2, GUEST_CHECK);
	TEST_ASSERT_EQ(huge_2m(t), before);

	/* Destroyed while the worker pauses after the first batch. */
	split_all(t, 3);
	set_logging(t, 0, false);
	if (mode == KVM_X86_COLLAPSE_ONDEMAND)
		vm_set(t->vm, "collapse_now", "1");
	TEST_ASSERT(wait_started(t, 60), "The worker did not start in 60 s");
	TEST_ASSERT_EQ(stat_of(t, "collapse_started_slots"), 1);
	destroy_test_vm(t);
	TEST_ASSERT_EQ(threads_left("kvm-collapse"), 0);
}

/*
 * resume (lazy modes): slot 1 (large) is collapsed by the ioctl in one go,
 * for a baseline, then split again and collapsed by an ioctl interrupted by
 * a signal once its collapse has started (in ondemand mode, so that only the
 * ioctl collapses); slot 0 (a lower index) stops logging meanwhile.  The next
 * ioctl must finish slot 1 where it stopped, then do slot 0: slot 1's counts
 * equal the baseline, and each slot has exactly one start and one end in the
 * trace.  In deferred mode, the VM is switched back to it first: the worker
 * must take slot 1 on at once, though it is due in an hour (a collapse that
 * has started is never put off), and leave slot 0 to the ioctl.
 */
static void test_resume(void)
{
	uint64_t sizes[] = { 32ULL << 20, race_size, 0 };
	struct test_vm *t = create_vm(sizes);
	struct sigaction sa = { .sa_handler = no_op };
	struct interrupted x = { .vm = t->vm };
	uint64_t r0, base1, base0, part, end;
	int mode = vm_mode(t->vm);
	struct slot_trace t0, t1;
	pthread_t thread;

	TEST_ASSERT(mode != KVM_X86_COLLAPSE_SYNC,
		    "resume needs a lazy mode (kvm.collapse_mode)");
	/* Only the ioctl collapses here, one region per batch. */
	set_collapse(t->vm, KVM_X86_COLLAPSE_SET_DELAY | KVM_X86_COLLAPSE_SET_BATCH,
		     0, 3600000, 1);
	TEST_ASSERT(!sigaction(SIGUSR1, &sa, NULL), "sigaction");
	trace_start();
	pass(t, 1, GUEST_WRITE);

	/* Baseline: each slot collapsed in one go. */
	split_all(t, 2);
	set_logging(t, 1, false);
	TEST_ASSERT_EQ(collapse_now(t->vm, 0), 0);
	base1 = stat_of(t, "collapse_regions");
	set_logging(t, 0, false);
	TEST_ASSERT_EQ(collapse_now(t->vm, 0), 0);
	base0 = stat_of(t, "collapse_regions") - base1;
	TEST_ASSERT(base1 > base0 && base0 > 0,
		    "Baseline: %lu regions in slot 1, %lu in slot 0", base1, base0);
	pass(t, 2, GUEST_CHECK);

	/* Interrupted once slot 1's collapse has started. */
	set_collapse(t->vm, KVM_X86_COLLAPSE_SET_MODE, KVM_X86_COLLAPSE_ONDEMAND,
		     0, 0);
	split_all(t, 3);
	trace_clear();
	r0 = stat_of(t, "collapse_regions");
	set_logging(t, 1, false);
	pthread_create(&thread, NULL, collapse_thread, &x);
	end = now_ns() + 10000000000ULL;
	while (!stat_of(t, "collapse_started_slots") && now_ns() < end)
		;
	pthread_kill(thread, SIGUSR1);
	pthread_join(thread, NULL);
	part = stat_of(t, "collapse_regions") - r0;
	TEST_ASSERT(part < base1,
		    "Slot 1 collapsed before the signal (%lu of %lu regions): a larger -r gives it more time",
		    part, base1);
	TEST_ASSERT(x.r == -EINTR, "The interrupted ioctl returned %d", x.r);
	TEST_ASSERT_EQ(stat_of(t, "collapse_started_slots"), 1);
	TEST_ASSERT_EQ(stat_of(t, "collapse_pending_slots"), 1);

	/* Slot 0 becomes pending; slot 1 goes on first, where it was. */
	set_logging(t, 0, false);
	TEST_ASSERT_EQ(stat_of(t, "collapse_pending_slots"), 2);
	if (mode == KVM_X86_COLLAPSE_DEFERRED) {
		set_collapse(t->vm, KVM_X86_COLLAPSE_SET_MODE, mode, 0, 0);
		end = now_ns() + 60000000000ULL;
		while (stat_of(t, "collapse_pending_slots") == 2 &&
		       now_ns() < end)
			usleep(1000);
		TEST_ASSERT_EQ(stat_of(t, "collapse_pending_slots"), 1);
		TEST_ASSERT_EQ(stat_of(t, "collapse_started_slots"), 0);
		TEST_ASSERT_EQ(stat_of(t, "collapse_regions") - r0, base1);
	}
	TEST_ASSERT_EQ(collapse_now(t->vm, 0), 0);
	TEST_ASSERT_EQ(stat_of(t, "collapse_pending_slots"), 0);
	TEST_ASSERT_EQ(stat_of(t, "collapse_started_slots"), 0);
	ksft_print_msg("resume: slot 1 interrupted after %lu of %lu regions, then %lu + %lu\n",
		       part, base1, stat_of(t, "collapse_regions") - r0 - base0,
		       base0);
	TEST_ASSERT_EQ(stat_of(t, "collapse_regions") - r0, base1 + base0);
	TEST_ASSERT_EQ(stat_of(t, "collapse_runs"), 4);

	t1 = trace_slot(slot_id(1));
	t0 = trace_slot(slot_id(0));
	TEST_ASSERT(t1.starts == 1 && t1.ends == 1 && !t1.cancelled &&
		    !t1.end_before_start && t1.end_regions == base1,
		    "slot 1 traced %d starts, %d ends (%d cancelled), %lu regions at the end; want 1, 1, %lu",
		    t1.starts, t1.ends, t1.cancelled, t1.end_regions, base1);
	TEST_ASSERT(t0.starts == 1 && t0.ends == 1 && !t0.cancelled &&
		    t0.end_regions == base0,
		    "slot 0 traced %d starts, %d ends, %lu regions; want 1, 1, %lu",
		    t0.starts, t0.ends, t0.end_regions, base0);
	pass(t, 3, GUEST_CHECK);
	TEST_ASSERT_EQ(huge_2m(t), base0 + base1);
	trace_stop();
	free_test_vm(t);
}

/*
 * A memslot with the id, GPA and size of test slot 0 in the SMM address
 * space, backed by memory of its own that no vCPU maps (none enters SMM).
 */
struct smm_twin {
	uint32_t slot;
	uint64_t size;
	void *mem;
};

static void smm_twin_add(struct test_vm *t, struct smm_twin *tw)
{
	tw->slot = (1 << 16) | slot_id(0);
	tw->size = t->slot_size[0];
	tw->mem = mmap(NULL, tw->size, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	TEST_ASSERT(tw->mem != MAP_FAILED, "mmap");
	vm_set_user_memory_region(t->vm, tw->slot, 0, TEST_GPA, tw->size,
				  tw->mem);
}

static void smm_twin_logging(struct test_vm *t, struct smm_twin *tw, bool on)
{
	vm_set_user_memory_region(t->vm, tw->slot,
				  on ? KVM_MEM_LOG_DIRTY_PAGES : 0, TEST_GPA,
				  tw->size, tw->mem);
}

static void smm_twin_delete(struct test_vm *t, struct smm_twin *tw)
{
	vm_set_user_memory_region(t->vm, tw->slot, 0, 0, 0, NULL);
	munmap(tw->mem, tw->size);
	tw->mem = NULL;
}

/*
 * smm (lazy modes): a slot of the SMM address space with the same id as a
 * slot of address space 0 is pending apart from it: logging enabled again
 * on it cancels its collapse only, and the other one is collapsed.
 */
static void test_smm(void)
{
	struct test_vm *t = create_test_vm(race_size);
	struct smm_twin tw;
	struct slot_trace st;
	uint64_t before;

	TEST_REQUIRE(kvm_check_cap(KVM_CAP_MULTI_ADDRESS_SPACE) >= 2);
	TEST_ASSERT(vm_mode(t->vm) != KVM_X86_COLLAPSE_SYNC,
		    "smm needs a lazy mode (kvm.collapse_mode)");
	set_collapse(t->vm, KVM_X86_COLLAPSE_SET_DELAY, 0, 3600000, 0);
	smm_twin_add(t, &tw);
	trace_start();
	pass(t, 1, GUEST_WRITE);
	before = huge_2m(t);

	split_all(t, 2);
	smm_twin_logging(t, &tw, true);
	smm_twin_logging(t, &tw, false);
	set_logging(t, 0, false);
	TEST_ASSERT_EQ(stat_of(t, "collapse_pending_slots"), 2);

	/* Logging again on the SMM slot cancels its collapse, not the other. */
	smm_twin_logging(t, &tw, true);
	TEST_ASSERT_EQ(stat_of(t, "collapse_pending_slots"), 1);
	TEST_ASSERT_EQ(stat_of(t, "collapse_cancelled"), 1);
	TEST_ASSERT_EQ(collapse_now(t->vm, 0), 0);
	TEST_ASSERT_EQ(stat_of(t, "collapse_pending_slots"), 0);
	TEST_ASSERT_EQ(stat_of(t, "collapse_runs"), 1);
	TEST_ASSERT_EQ(stat_of(t, "collapse_regions"), before);
	st = trace_slot(slot_id(0));
	TEST_ASSERT(st.starts == 1 && st.ends == 1 && !st.cancelled,
		    "as_id 0 slot %d: %d starts, %d ends, %d cancelled",
		    slot_id(0), st.starts, st.ends, st.cancelled);
	pass(t, 2, GUEST_CHECK);
	TEST_ASSERT_EQ(huge_2m(t), before);
	trace_stop();

	smm_twin_delete(t, &tw);
	free_test_vm(t);
}

/*
 * races: two slots (-r split between them) log together.  Each iteration
 * dirties them with logging on, checks the dirty logs and the memory, stops
 * logging on both, then does one of 8 actions on the first, in turn,
 * while the collapse is pending (a 1 s delay, or ondemand) or, every other
 * round of 8, once the worker runs it (collapse_now, collapse_started_slots
 * seen; a long collapse_pause_pct keeps it running), sometimes with the
 * vCPUs faulting memory back in at the same time, and with them writing new
 * data across the ioctl that stops logging (action 7) and the one that
 * starts it again (action 1).  Where each action hit the collapse
 * (pending, running, or already done, as in sync mode) is reported; action
 * 3 puts the VM's mode back after its switches, so that in a lazy mode 16
 * iterations hit each action once pending and once running, as asserted.
 * Where the VM has an SMM address space, a slot with the first slot's id
 * there (which no vCPU maps: nothing to collapse) starts and stops logging
 * with the two, just after them: three collapses pending, the first slot's
 * first, that a move or delete of the first slot must keep apart (in
 * ondemand mode, where nothing runs by itself, the other two stay pending).
 */
static void races_logging(struct test_vm *t, struct smm_twin *tw, bool on)
{
	int i;

	for (i = 0; i < t->nr_slots; i++)
		set_logging(t, i, on);
	if (tw->mem)
		smm_twin_logging(t, tw, on);
}

static void races_kept(struct test_vm *t, int slots, bool ondemand_pending,
		       const char *what)
{
	uint64_t pending = stat_of(t, "collapse_pending_slots");

	/* The other slots' collapses, at most, are left; all in ondemand. */
	TEST_ASSERT(ondemand_pending ? pending == slots - 1 : pending <= slots - 1,
		    "%lu of %d collapses pending after the %s", pending, slots,
		    what);
}

static void test_races(void)
{
	static const char * const actions[] = {
		"run", "log again", "collapse_now storm", "mode switches",
		"move", "delete", "batch changes", "stop while writing",
	};
	static const char * const states[] = { "pending", "running", "done" };
	uint64_t half = race_size / 2 & ~(SMALL_SIZE - 1);
	uint64_t sizes[] = { race_size - half, half, 0 };
	struct test_vm *t = create_vm(sizes);
	struct smm_twin tw = {};
	int mode = vm_mode(t->vm);
	int hits[8][3] = { 0 };
	uint64_t stops = 0, iter = 1;
	bool logging = false;
	int i, j, slots = t->nr_slots;
	char buf[16];

	if (kvm_check_cap(KVM_CAP_MULTI_ADDRESS_SPACE) >= 2) {
		smm_twin_add(t, &tw);
		slots++;
	} else {
		ksft_print_msg("races: no SMM address space, no twin slot\n");
	}
	/* One 2MiB region per lock hold: the worker runs for long. */
	vm_set(t->vm, "collapse_batch", "1");
	pass(t, iter, GUEST_WRITE);
	check_pass(t, iter, false);

	for (i = 0; i < iterations; i++) {
		int action = i % 8, state;
		bool running = (i / 8) % 2;
		bool od_pending = mode == KVM_X86_COLLAPSE_ONDEMAND && !running;

		if (!logging) {
			races_logging(t, &tw, true);
			logging = true;
		}
		/* Clear what earlier passes left in the logs. */
		for (j = 0; j < t->nr_slots; j++)
			kvm_vm_get_dirty_log(t->vm, slot_id(j), t->bitmap);
		pass(t, ++iter, GUEST_WRITE);
		check_pass(t, iter, true);

		vm_set(t->vm, "collapse_delay_ms", "1000");
		vm_set(t->vm, "collapse_pause_pct", running ? "5000" : "0");
		/* Action 7: the vCPUs write new data across the stop. */
		if (action == 7)
			pass_start(t, ++iter, GUEST_WRITE);
		races_logging(t, &tw, false);
		logging = false;
		stops += slots;
		/* Nothing starts by itself in ondemand mode: all pending. */
		if (od_pending)
			TEST_ASSERT_EQ(stat_of(t, "collapse_pending_slots"), slots);
		if (running) {
			vm_set(t->vm, "collapse_now", "1");
			wait_started(t, 10);
		}
		state = !stat_of(t, "collapse_pending_slots") ? 2 :
			!!stat_of(t, "collapse_started_slots");
		hits[action][state]++;
		pr_debug("races: iteration %d, action %d, %s\n", i, action,
			 states[state]);

		switch (action) {
		case 0:	/* let it run, with the guest faulting pages back */
			pass(t, iter, GUEST_CHECK);
			break;
		case 1:	/* log again at once, the vCPUs writing new data */
			pass_start(t, ++iter, GUEST_WRITE);
			races_logging(t, &tw, true);
			logging = true;
			/* The ioctl itself drops the pending collapse. */
			TEST_ASSERT_EQ(stat_of(t, "collapse_pending_slots"), 0);
			pass_wait(t);
			check_pass(t, iter, false);
			break;
		case 2:	/* collapse_now storm, with the guest reading */
			pass_start(t, iter, GUEST_CHECK);
			for (j = 0; j < 10; j++) {
				vm_set(t->vm, "collapse_now", "1");
				usleep(rand() % 500);
			}
			pass_wait(t);
			break;
		case 3:	/* switch modes back and forth */
			for (j = 0; j < 6; j++) {
				vm_set(t->vm, "collapse_mode",
				       mode_names[rand() % ARRAY_SIZE(mode_names)]);
				usleep(rand() % 1000);
			}
			vm_set(t->vm, "collapse_mode", mode_names[mode]);
			break;
		case 4:	/* move the slot away and back: memory must not change */
			vm_mem_region_move(t->vm, slot_id(0), MOVED_GPA);
			vm_mem_region_move(t->vm, slot_id(0), TEST_GPA);
			races_kept(t, slots, od_pending, "move");
			check_pass(t, iter, false);
			break;
		case 5:	/* delete and re-create the slot (fresh memory) */
			vm_mem_region_delete(t->vm, slot_id(0));
			races_kept(t, slots, od_pending, "delete");
			add_slot(t, 0, TEST_GPA);
			pass(t, iter, GUEST_WRITE);
			break;
		case 6:	/* batch size changes under the worker */
			for (j = 0; j < 5; j++) {
				snprintf(buf, sizeof(buf), "%u", 1 + rand() % 4);
				vm_set(t->vm, "collapse_batch", buf);
				usleep(rand() % 1000);
			}
			break;
		case 7:	/* the stop came while the guest was writing */
			pass_wait(t);
			check_pass(t, iter, false);
			pass(t, iter, GUEST_CHECK);
			break;
		}
		TEST_ASSERT(stat_of(t, "collapse_pending_slots") <= slots,
			    "More pending slots than slots");
	}

	/* Finish: every stop ended as exactly one collapse or one cancel. */
	if (logging) {
		races_logging(t, &tw, false);
		stops += slots;
	}
	TEST_ASSERT_EQ(collapse_now(t->vm, 0), 0);
	TEST_ASSERT_EQ(stat_of(t, "collapse_pending_slots"), 0);
	ksft_print_msg("races: %lu stops: %lu collapsed, %lu cancelled\n", stops,
		       stat_of(t, "collapse_runs"), stat_of(t, "collapse_cancelled"));
	for (i = 0; i < 8; i++)
		ksft_print_msg("races: %s: %d pending, %d running, %d done\n",
			       actions[i], hits[i][0], hits[i][1], hits[i][2]);
	TEST_ASSERT_EQ(stat_of(t, "collapse_runs") + stat_of(t, "collapse_cancelled"),
		       stops);
	for (i = 0; mode != KVM_X86_COLLAPSE_SYNC && iterations >= 16 && i < 8; i++)
		TEST_ASSERT(hits[i][0] && hits[i][1],
			    "races: %s never hit a %s collapse in %s mode",
			    actions[i], hits[i][0] ? "running" : "pending",
			    mode_names[mode]);
	pass(t, iter, GUEST_CHECK);
	pass(t, ++iter, GUEST_WRITE);
	check_pass(t, iter, false);
	if (tw.mem)
		smm_twin_delete(t, &tw);
	free_test_vm(t);
}

/*
 * The objects kmemleak reports as leaked after @scans scans (an object is
 * reported once its contents stayed the same over a scan, and only when
 * older than 5 s; a scan takes some 25 s on the debug kernel under TCG):
 * its report, "unreferenced object 0x... (size N):" and the allocation's
 * backtrace for each, in a buffer to free().
 */
static char *kmemleak_report(int scans)
{
	size_t len = 0, size = 4096;
	char *buf = malloc(size);
	ssize_t r;
	int fd, i, err;

	TEST_ASSERT(buf, "malloc");
	for (i = 0; i < scans; i++) {
		err = write_file(KMEMLEAK, "scan");
		TEST_ASSERT(!err,
			    "kmemleak scan: %s (is kmemleak on? CONFIG_DEBUG_KMEMLEAK, not kmemleak=off)",
			    strerror(-err));
	}
	fd = open(KMEMLEAK, O_RDONLY);
	TEST_ASSERT(fd >= 0, "open(%s): %s", KMEMLEAK, strerror(errno));
	while ((r = read(fd, buf + len, size - len - 1)) > 0) {
		len += r;
		if (size - len < 1024) {
			size *= 2;
			buf = realloc(buf, size);
			TEST_ASSERT(buf, "realloc");
		}
	}
	TEST_ASSERT(r == 0, "read(%s): %s", KMEMLEAK, strerror(errno));
	buf[len] = '\0';
	close(fd);
	return buf;
}

/*
 * The objects of @now's report that @before's does not have: the same
 * address, size, task and allocation time (an object of the first report
 * freed meanwhile can leave its address to a new one).
 */
static int kmemleak_new(const char *before, const char *now)
{
	static const char obj[] = "unreferenced object ";
	const char *p;
	int n = 0;

	for (p = strstr(now, obj); p; p = strstr(p + 1, obj)) {
		char head[256];
		size_t len = strcspn(p, "\n");

		if (p[len])
			len += 1 + strcspn(p + len + 1, "\n");
		snprintf(head, sizeof(head), "%.*s", (int)len, p);
		if (strstr(before, head))
			continue;
		if (!n)
			ksft_print_msg("teardown: kmemleak:\n%.4000s\n", p);
		n++;
	}
	return n;
}

/*
 * teardown: destroy VMs after a stop, four ways in turn: made ondemand, in
 * the VM's mode, right after collapse_now, and through a debugfs file that
 * holds the last reference to the VM (its collapse_now written after the
 * VM's fds are closed; in sync mode the VM is made ondemand first).  In
 * every other round of four the collapse is left pending (a delay of an
 * hour, no collapse_now), in the others it is made to run first
 * (collapse_now, or delay 0; collapse_started_slots seen; a long
 * collapse_pause_pct keeps it running).  The worker and the VM's debugfs
 * directory must be gone after each; where each way hit the collapse is
 * reported, and from 8 iterations each must have hit it pending and running
 * where its mode can: all but the VM's own sync mode, collapse_now never
 * pending, ondemand mode never running by itself.  With -k, nothing the
 * loop allocated may be left unreferenced: kmemleak's report after it has
 * no object that it lacked before (what leaked earlier in the boot is the
 * runner's to report, run-tests.sh; one scan before suffices for what the
 * runner's and earlier scans saw).
 */
static void test_teardown(void)
{
	static const char * const names[] = {
		"ondemand", "the VM's mode", "collapse_now", "debugfs file held",
	};
	int i, n, mode = KVM_X86_COLLAPSE_SYNC, hits[4][3] = { 0 };
	char *leaks = NULL, *now;
	struct stat st;

	if (need_kmemleak) {
		TEST_ASSERT(!access(KMEMLEAK, W_OK),
			    "-k: no %s (CONFIG_DEBUG_KMEMLEAK)", KMEMLEAK);
		leaks = kmemleak_report(1);
	}

	for (i = 0; i < iterations; i++) {
		struct test_vm *t = create_test_vm(race_size);
		int action = i % 4, fd = -1, state;
		bool run = (i / 4) % 2;
		char dir[128];

		snprintf(dir, sizeof(dir), "%s", vm_dir(t->vm));
		mode = vm_mode(t->vm);
		vm_set(t->vm, "collapse_batch", "1");
		vm_set(t->vm, "collapse_delay_ms", run ? "0" : "3600000");
		vm_set(t->vm, "collapse_pause_pct", run ? "5000" : "0");
		if (action == 0 || (action == 3 && mode == KVM_X86_COLLAPSE_SYNC))
			vm_set(t->vm, "collapse_mode", "ondemand");
		pass(t, 1, GUEST_WRITE);
		split_all(t, 2);
		if (action == 3) {
			fd = open(vm_file(t->vm, "collapse_now"), O_WRONLY);
			TEST_ASSERT(fd >= 0, "open collapse_now");
		}
		set_logging(t, 0, false);
		if (action == 2 || (run && action != 1))
			vm_set(t->vm, "collapse_now", "1");
		/* In the VM's ondemand mode nothing starts by itself. */
		if (run && !(action == 1 && mode == KVM_X86_COLLAPSE_ONDEMAND))
			wait_started(t, 10);
		state = !stat_of(t, "collapse_pending_slots") ? 2 :
			!!stat_of(t, "collapse_started_slots");
		hits[action][state]++;
		pr_debug("teardown: iteration %d, action %d, state %d\n", i,
			 action, state);
		destroy_test_vm(t);
		if (fd >= 0) {
			/* The VM lives on through this file until it is closed. */
			TEST_ASSERT(write(fd, "1", 1) == 1, "collapse_now after free");
			usleep(rand() % 3000);
			close(fd);
		}
		TEST_ASSERT_EQ(threads_left("kvm-collapse"), 0);
		TEST_ASSERT(stat(dir, &st) && errno == ENOENT,
			    "%s still there after the VM was destroyed", dir);
	}
	for (i = 0; i < 4; i++)
		ksft_print_msg("teardown: %s: %d destroyed pending, %d running, %d done\n",
			       names[i], hits[i][0], hits[i][1], hits[i][2]);
	for (i = 0; iterations >= 8 && i < 4; i++) {
		bool lazy = mode != KVM_X86_COLLAPSE_SYNC;
		bool pending = i != 2 && (i != 1 || lazy);
		bool running = i == 1 ? mode == KVM_X86_COLLAPSE_DEFERRED :
				i != 2 || lazy;

		TEST_ASSERT((!pending || hits[i][0]) && (!running || hits[i][1]),
			    "teardown: %s never destroyed a %s collapse in %s mode",
			    names[i], pending && !hits[i][0] ? "pending" : "running",
			    mode_names[mode]);
	}
	if (!leaks)
		return;
	/* Past kmemleak's minimum age of what it reports. */
	sleep(6);
	now = kmemleak_report(2);
	n = kmemleak_new(leaks, now);
	TEST_ASSERT(!n, "kmemleak: %d objects leaked by %d VMs destroyed", n,
		    iterations);
	ksft_print_msg("teardown: kmemleak: nothing leaked\n");
	free(now);
	free(leaks);
}

static const struct {
	const char *name;
	void (*fn)(void);
} subtests[] = {
	{ "knobs", test_knobs },
	{ "abi", test_abi },
	{ "worker", test_worker },
	{ "restore", test_restore },
	{ "inplace", test_inplace },
	{ "stoptime", test_stoptime },
	{ "starve", test_starve },
	{ "pace", test_pace },
	{ "resume", test_resume },
	{ "smm", test_smm },
	{ "races", test_races },
	{ "teardown", test_teardown },
};

static void help(const char *name)
{
	int i;

	printf("usage: %s [-h] [-t subtest] [-b size] [-r size] [-s backing]\n"
	       "          [-v vcpus] [-i iterations] [-n stops] [-S seed] [-B batch]\n"
	       "          [-x] [-k]\n",
	       name);
	printf(" -t: run only this subtest (may be repeated):");
	for (i = 0; i < ARRAY_SIZE(subtests); i++)
		printf(" %s", subtests[i].name);
	puts(". Default: all");
	puts(" -b: size of the large slot of stoptime, restore and inplace\n"
	     "     (default 1G)");
	puts(" -r: size of the slots of the other subtests (default 64M;\n"
	     "     races splits it between its two slots)");
	backing_src_help("-s");
	puts(" -v: vCPUs touching memory (default 2)");
	puts(" -i: iterations of races and teardown (default 20; races asserts\n"
	     "     that each action hit a pending and a running collapse from 16)");
	printf(" -n: stops of each slot stoptime takes the fastest of (default 5,\n"
	       "     at most %d)\n", MAX_STOPS);
	puts(" -S: random seed (default: time)");
	puts(" -B: collapse_batch of the restore VM (default: kvm.collapse_batch)");
	puts(" -x: inplace with kvm.nx_huge_pages=force (restored after)");
	puts(" -k: teardown asserts that kmemleak finds nothing the destroyed VMs\n"
	     "     leaked (some 100 s on the debug kernel under TCG)");
}

static int find_subtest(const char *name)
{
	int i;

	for (i = 0; i < ARRAY_SIZE(subtests); i++)
		if (!strcmp(name, subtests[i].name))
			return i;
	return -1;
}

int main(int argc, char *argv[])
{
	bool only[ARRAY_SIZE(subtests)] = {};
	char saved[ARRAY_SIZE(restored)][64], path[128];
	int opt, i, j, n = 0;

	seed = time(NULL);
	while ((opt = getopt(argc, argv, "ht:b:r:s:v:i:n:S:B:xk")) != -1) {
		switch (opt) {
		case 't':
			i = find_subtest(optarg);
			TEST_ASSERT(i >= 0, "-t %s: no such subtest", optarg);
			n += !only[i];
			only[i] = true;
			break;
		case 'b':
			test_size = parse_size(optarg);
			break;
		case 'r':
			race_size = parse_size(optarg);
			break;
		case 's':
			backing = parse_backing_src_type(optarg);
			break;
		case 'v':
			nr_vcpus = atoi_positive("vCPUs", optarg);
			TEST_ASSERT(nr_vcpus <= MAX_VCPUS, "At most %d vCPUs",
				    MAX_VCPUS);
			break;
		case 'i':
			iterations = atoi_positive("Iterations", optarg);
			break;
		case 'n':
			nr_stops = atoi_positive("Stops", optarg);
			TEST_ASSERT(nr_stops <= MAX_STOPS, "At most %d stops",
				    MAX_STOPS);
			break;
		case 'S':
			seed = atoi_non_negative("Seed", optarg);
			break;
		case 'B':
			restore_batch = optarg;
			break;
		case 'x':
			nx_force = true;
			break;
		case 'k':
			need_kmemleak = true;
			break;
		case 'h':
			help(argv[0]);
			exit(KSFT_PASS);
		default:
			help(argv[0]);
			exit(KSFT_FAIL);
		}
	}
	TEST_ASSERT(optind == argc, "Unexpected argument '%s'", argv[optind]);
	TEST_ASSERT(!(test_size % (2 << 20)) && !(race_size % (2 << 20)) &&
		    race_size > SMALL_SIZE,
		    "Sizes must be multiples of 2MiB, -r over 2MiB");

	TEST_REQUIRE(kvm_has_cap(KVM_CAP_X86_HUGE_PAGE_COLLAPSE));
	TEST_REQUIRE(!access("/sys/kernel/debug/kvm", F_OK));

	for (i = 0; i < ARRAY_SIZE(restored); i++) {
		snprintf(path, sizeof(path), PARAM_DIR "%s", restored[i]);
		read_file(path, saved[i], sizeof(saved[i]));
	}

	ksft_print_header();
	ksft_set_plan(n ? n : ARRAY_SIZE(subtests));
	ksft_print_msg("seed %u, backing %s, kvm.collapse_mode %s",
		       seed, vm_mem_backing_src_alias(backing)->name, saved[0]);

	for (i = 0; i < ARRAY_SIZE(subtests); i++) {
		pid_t pid, parent = getpid();
		int status;

		if (n && !only[i])
			continue;

		/*
		 * A failed TEST_ASSERT exits: run each subtest in a child,
		 * which dies with the parent (say, killed by timeout).
		 */
		pid = fork();
		TEST_ASSERT(pid >= 0, "fork");
		if (!pid) {
			TEST_ASSERT(!prctl(PR_SET_PDEATHSIG, SIGKILL),
				    "PR_SET_PDEATHSIG");
			if (getppid() != parent)
				exit(KSFT_FAIL);
			srand(seed + i);
			subtests[i].fn();
			exit(KSFT_PASS);
		}
		TEST_ASSERT(waitpid(pid, &status, 0) == pid, "waitpid");

		/* Put back what a subtest changed, however it ended. */
		for (j = 0; j < ARRAY_SIZE(restored); j++) {
			char now[64];

			snprintf(path, sizeof(path), PARAM_DIR "%s", restored[j]);
			read_file(path, now, sizeof(now));
			if (strcmp(now, saved[j]))
				TEST_ASSERT(!write_file(path, saved[j]),
					    "Cannot restore %s", path);
		}

		if (WIFEXITED(status) && WEXITSTATUS(status) == KSFT_SKIP)
			ksft_test_result_skip("%s\n", subtests[i].name);
		else
			ksft_test_result(WIFEXITED(status) && !WEXITSTATUS(status),
					 "%s\n", subtests[i].name);
	}
	ksft_finished();
	return 0;
}
