// SPDX-License-Identifier: GPL-2.0-only
/*
 * Lazy huge page collapse after dirty logging stops.
 *
 * Dirty logging splits huge SPTEs; when it stops, KVM collapses them back
 * either inside the ioctl (kvm.collapse_mode=sync) or later, from a per-VM
 * worker (deferred) or on request (ondemand).  The subtests check, in the
 * VM's mode (kvm.collapse_mode when the VM is created):
 *
 *  stoptime: the ioctl that clears KVM_MEM_LOG_DIRTY_PAGES costs about the
 *            same for a 2MiB and a large slot in the lazy modes (the
 *            difference is under 1/10 of the collapse it no longer does),
 *            and grows with the size in sync mode (> 8x);
 *  restore:  huge pages come back to the pre-logging count: at once (sync),
 *            after the delay (deferred), after collapse_now and not before
 *            (ondemand); the statistics agree, and the worker's longest
 *            lock hold is a fraction of its run (collapse_batch honoured);
 *  races:    random re-enabling of dirty logging, mode switches, collapse_now
 *            storms, slot moves and deletes while a collapse is pending or
 *            running, with vCPUs touching memory: no dirty page is missed,
 *            guest memory holds what the guest wrote, statistics add up;
 *  teardown: VMs destroyed (also through a debugfs file holding the last
 *            reference) with a collapse pending or running;
 *  knobs:    bad input to every module parameter and debugfs file is
 *            rejected with the documented errno and changes nothing.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <linux/bitmap.h>

#include "kvm_util.h"
#include "processor.h"
#include "test_util.h"
#include "ucall_common.h"

#define TEST_SLOT	10
#define SMALL_SLOT	11
/* Above the default memory, 1GiB aligned; guest virtual == guest physical. */
#define TEST_GPA	(4ULL << 30)
#define MOVED_GPA	(64ULL << 30)
#define SMALL_SIZE	(2ULL << 20)
#define HPAGE_PAGES	512

#define PARAM_DIR	"/sys/module/kvm/parameters/"
/*
 * Under nested emulation (QEMU TCG with -cpu max) the guest sometimes dies
 * of a triple fault while it first touches its memory, on kernels without
 * this series too (dirty_log_page_splitting_test shows it as well).  A
 * subtest whose guest shuts down exits with this status and is run again,
 * up to SHUTDOWN_TRIES times in all; any other failure is final.
 */
#define SHUTDOWN_RETRY	75
#define SHUTDOWN_TRIES	3
#define MAX_VCPUS	8

/* Shared with the guest. */
static uint64_t guest_iter;
static bool guest_write;

static uint64_t test_size = 1ULL << 30;
static uint64_t race_size = 64ULL << 20;
static int nr_vcpus = 2;
static int iterations = 20;
#define MAX_STOPS	16
static int nr_stops = 5;
static const char *restore_batch;
static unsigned int seed;
static enum vm_mem_backing_src_type backing = VM_MEM_SRC_ANONYMOUS_THP;

struct test_vm {
	struct kvm_vm *vm;
	struct kvm_vcpu *vcpus[MAX_VCPUS];
	pthread_t threads[MAX_VCPUS];
	uint64_t size;		/* bytes of TEST_SLOT */
	uint64_t npages;	/* 4KiB pages of TEST_SLOT (+ SMALL_SLOT) touched */
	bool small;		/* SMALL_SLOT exists, mapped right after */
	unsigned long *bitmap;
};

/*
 * vCPU i writes (iteration << 32 | page index) to every nr_vcpus-th page,
 * starting at page i, or only reads it, then reports to the host.
 */
static void guest_code(uint64_t gva, uint64_t npages, uint64_t first,
		       uint64_t stride)
{
	uint64_t i;

	for (;;) {
		uint64_t iter = READ_ONCE(guest_iter);
		bool write = READ_ONCE(guest_write);

		for (i = first; i < npages; i += stride) {
			uint64_t *p = (uint64_t *)(gva + i * PAGE_SIZE);

			if (write)
				WRITE_ONCE(*p, iter << 32 | i);
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
		if (vcpu->run->exit_reason == KVM_EXIT_SHUTDOWN) {
			/* See SHUTDOWN_RETRY: main() runs the subtest again. */
			ksft_print_msg("vCPU %u: KVM_EXIT_SHUTDOWN (guest triple fault)\n",
				       vcpu->id);
			exit(SHUTDOWN_RETRY);
		}
		TEST_FAIL("Unexpected exit %s",
			  exit_reason_str(vcpu->run->exit_reason));
	}
	return NULL;
}

/* Start one pass of every vCPU over the test memory. */
static void pass_start(struct test_vm *t, uint64_t iter, bool write)
{
	int i;

	guest_iter = iter;
	guest_write = write;
	sync_global_to_guest(t->vm, guest_iter);
	sync_global_to_guest(t->vm, guest_write);
	for (i = 0; i < nr_vcpus; i++)
		pthread_create(&t->threads[i], NULL, vcpu_thread, t->vcpus[i]);
}

static void pass_wait(struct test_vm *t)
{
	int i;

	for (i = 0; i < nr_vcpus; i++)
		pthread_join(t->threads[i], NULL);
}

static void pass(struct test_vm *t, uint64_t iter, bool write)
{
	pass_start(t, iter, write);
	pass_wait(t);
}

static void add_test_slot(struct test_vm *t, uint64_t gpa)
{
	vm_userspace_mem_region_add(t->vm, backing, gpa, TEST_SLOT,
				    t->size / PAGE_SIZE, 0);
}

static struct test_vm *create_test_vm(uint64_t size, bool small)
{
	struct test_vm *t = calloc(1, sizeof(*t));
	uint64_t gva_end = TEST_GPA + size;
	int i;

	TEST_ASSERT(t, "calloc");
	t->size = size;
	t->small = small;
	t->vm = vm_create_with_vcpus(nr_vcpus, guest_code, t->vcpus);
	add_test_slot(t, TEST_GPA);
	/*
	 * 2MiB guest mappings: with shadow paging (npt=0), 4KiB guest page
	 * tables would make the SPTEs indirect, and never collapsible.
	 */
	virt_map_level(t->vm, TEST_GPA, TEST_GPA, size, PG_LEVEL_2M);
	if (small) {
		vm_userspace_mem_region_add(t->vm, backing, gva_end, SMALL_SLOT,
					    SMALL_SIZE / PAGE_SIZE, 0);
		virt_map_level(t->vm, gva_end, gva_end, SMALL_SIZE, PG_LEVEL_2M);
		gva_end += SMALL_SIZE;
	}
	t->npages = (gva_end - TEST_GPA) / PAGE_SIZE;
	for (i = 0; i < nr_vcpus; i++)
		vcpu_args_set(t->vcpus[i], 4, TEST_GPA, t->npages, i, nr_vcpus);
	t->bitmap = bitmap_zalloc(size / PAGE_SIZE);
	return t;
}

static void free_test_vm(struct test_vm *t)
{
	kvm_vm_free(t->vm);
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

static const char *vm_file(struct kvm_vm *vm, const char *name)
{
	static char path[256];

	snprintf(path, sizeof(path), "/sys/kernel/debug/kvm/%d-%d/%s",
		 getpid(), vm->fd, name);
	return path;
}

static void vm_set(struct kvm_vm *vm, const char *name, const char *val)
{
	int r = write_file(vm_file(vm, name), val);

	TEST_ASSERT(!r, "%s <- %s: %s", name, val, strerror(-r));
}

static const char * const mode_names[] = { "sync", "deferred", "ondemand" };

/* The VM's mode, from the "sync [deferred] ondemand" of collapse_mode. */
static int vm_mode(struct kvm_vm *vm)
{
	char buf[64];
	int i;

	read_file(vm_file(vm, "collapse_mode"), buf, sizeof(buf));
	for (i = 0; i < 3; i++) {
		char want[16];

		snprintf(want, sizeof(want), "[%s]", mode_names[i]);
		if (strstr(buf, want))
			return i;
	}
	TEST_FAIL("Bad collapse_mode '%s'", buf);
	return -1;
}

static unsigned int vm_batch(struct kvm_vm *vm)
{
	char buf[32];

	read_file(vm_file(vm, "collapse_batch"), buf, sizeof(buf));
	return atoi(buf);
}

#define STAT(t, name)	vm_get_stat((t)->vm, name)

/* Wait up to @secs for the pending collapses to be done. */
static bool wait_no_pending(struct test_vm *t, int secs)
{
	uint64_t end = now_ns() + secs * 1000000000ULL;

	while (STAT(t, "collapse_pending_slots")) {
		if (now_ns() > end)
			return false;
		usleep(10000);
	}
	return true;
}

static void set_logging(struct test_vm *t, int slot, bool on)
{
	vm_mem_region_set_flags(t->vm, slot, on ? KVM_MEM_LOG_DIRTY_PAGES : 0);
}

static uint64_t timed_stop(struct test_vm *t, int slot)
{
	uint64_t start = now_ns();

	set_logging(t, slot, false);
	return now_ns() - start;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(uint64_t *)a, y = *(uint64_t *)b;

	return x < y ? -1 : x > y;
}

static void require_lazy_collapse(void)
{
	/* Not a SKIP: on a kernel without the series these tests must fail. */
	TEST_ASSERT(!access(PARAM_DIR "collapse_mode", F_OK),
		    "kvm.collapse_mode missing: no lazy huge page collapse in this kernel");
}

/*
 * stoptime: the fastest of nr_stops (-n, default 5) stops of a 2MiB slot and
 * of a test_size slot, both split by a full dirty pass first, measured
 * alternately in one VM.
 * Noise here only ever adds time (interrupts, RCU grace periods, the other
 * vCPU threads), so the minimum is the estimate least hurt by it.
 *
 * In sync mode the large stop zaps test_size / 2MiB times more SPTEs (512x
 * for 1GiB, ~100x in time measured under TCG): it must cost more than 8x
 * the small one.  In the lazy modes the part of the large stop that grows
 * with the size, large - small, must be under a tenth of what collapsing
 * the slots costs (collapse_time_ns of the collapse_now that ends the
 * test, measured in the same VM): it is ~0 where sync mode's is all of it.
 */
static void test_stoptime(void)
{
	struct test_vm *t = create_test_vm(test_size, true);
	int mode = vm_mode(t->vm);
	uint64_t small[MAX_STOPS], big[MAX_STOPS], ms, mb, collapse_ns;
	int i;

	/* The lazy modes must not collapse while this measures. */
	vm_set(t->vm, "collapse_delay_ms", "3600000");
	pass(t, 1, true);
	for (i = 0; i < nr_stops; i++) {
		set_logging(t, TEST_SLOT, true);
		set_logging(t, SMALL_SLOT, true);
		pass(t, i + 2, true);
		if (i & 1) {
			big[i] = timed_stop(t, TEST_SLOT);
			small[i] = timed_stop(t, SMALL_SLOT);
		} else {
			small[i] = timed_stop(t, SMALL_SLOT);
			big[i] = timed_stop(t, TEST_SLOT);
		}
	}
	qsort(small, nr_stops, sizeof(small[0]), cmp_u64);
	qsort(big, nr_stops, sizeof(big[0]), cmp_u64);
	ms = small[0];
	mb = big[0];
	ksft_print_msg("stoptime [%s]: 2MiB %lu us, %lu MiB %lu us, ratio %.1f\n",
		       mode_names[mode], ms / 1000, test_size >> 20, mb / 1000,
		       (double)mb / ms);
	if (mode == 0) {
		TEST_ASSERT(mb > 8 * ms,
			    "sync: stopping %lu MiB (%lu ns) should cost > 8x 2MiB (%lu ns)",
			    test_size >> 20, mb, ms);
		free_test_vm(t);
		return;
	}

	TEST_ASSERT_EQ(STAT(t, "collapse_pending_slots"), 2);
	vm_set(t->vm, "collapse_now", "1");
	TEST_ASSERT(wait_no_pending(t, 300), "Collapse still pending after 300 s");
	collapse_ns = STAT(t, "collapse_time_ns");
	ksft_print_msg("stoptime [%s]: collapsing both slots afterwards took %lu us\n",
		       mode_names[mode], collapse_ns / 1000);
	TEST_ASSERT(mb < ms || mb - ms < collapse_ns / 10,
		    "%s: stopping %lu MiB (%lu ns) vs 2MiB (%lu ns): the difference is over 1/10 of the collapse (%lu ns)",
		    mode_names[mode], test_size >> 20, mb, ms, collapse_ns);
	free_test_vm(t);
}

/* Guest memory mapped huge, in 2MiB units (a 1GiB mapping counts 512). */
static uint64_t huge_2m(struct test_vm *t)
{
	return STAT(t, "pages_2m") + HPAGE_PAGES * STAT(t, "pages_1g");
}

/*
 * restore: huge pages are back to the pre-logging count once the collapse
 * ran and the guest touched its memory again; not before in ondemand mode.
 * With 1GiB hugetlb backing, the 1GiB mappings come back.
 */
static void test_restore(void)
{
	struct test_vm *t = create_test_vm(test_size, false);
	int mode = vm_mode(t->vm);
	uint64_t before, split, after, sptes, holds, gb_before;

	vm_set(t->vm, "collapse_delay_ms", "3000");
	if (restore_batch)
		vm_set(t->vm, "collapse_batch", restore_batch);
	pass(t, 1, true);
	before = huge_2m(t);
	gb_before = STAT(t, "pages_1g");
	/* Without huge pages to start with, nothing here would be tested. */
	TEST_ASSERT(before >= test_size / (2 << 20) / 2,
		    "Only %lu 2MiB regions of %lu MiB mapped huge", before,
		    test_size >> 20);

	set_logging(t, TEST_SLOT, true);
	pass(t, 2, true);
	split = huge_2m(t);
	/* Dirty logging maps every written page with 4KiB SPTEs. */
	TEST_ASSERT(split < before,
		    "No split: %lu 2MiB regions mapped huge before, %lu logging",
		    before, split);

	set_logging(t, TEST_SLOT, false);
	if (mode == 0) {
		TEST_ASSERT_EQ(STAT(t, "collapse_pending_slots"), 0);
		TEST_ASSERT_EQ(STAT(t, "collapse_runs"), 1);
	} else {
		/* Lazy: the ioctl only queued the slot. */
		TEST_ASSERT_EQ(STAT(t, "collapse_pending_slots"), 1);
		TEST_ASSERT_EQ(STAT(t, "collapse_runs"), 0);
	}

	if (mode == 2) {
		/* ondemand: nothing happens until asked, however long. */
		sleep(4);
		pass(t, 3, false);
		TEST_ASSERT_EQ(STAT(t, "collapse_pending_slots"), 1);
		TEST_ASSERT_EQ(STAT(t, "collapse_runs"), 0);
		after = huge_2m(t);
		TEST_ASSERT(after < before,
			    "ondemand: %lu 2MiB regions mapped huge before collapse_now (%lu before logging)",
			    after, before);
		vm_set(t->vm, "collapse_now", "1");
	}
	TEST_ASSERT(wait_no_pending(t, 300), "Collapse still pending after 300 s");
	TEST_ASSERT_EQ(STAT(t, "collapse_runs"), 1);
	TEST_ASSERT_EQ(STAT(t, "collapse_cancelled"), 0);
	sptes = STAT(t, "collapse_sptes");
	TEST_ASSERT(sptes > 0, "The collapse zapped no SPTE");
	TEST_ASSERT(STAT(t, "collapse_max_hold_ns") > 0 &&
		    STAT(t, "collapse_time_ns") >= STAT(t, "collapse_max_hold_ns"),
		    "Collapse time statistics inconsistent");
	/*
	 * The worker takes the locks once per collapse_batch regions, and
	 * every region here was split: with 16 holds or more, the longest
	 * is about 1/16 of the run or less.  A quarter leaves room for a
	 * hold stretched by interrupts, and fails if the run was one hold.
	 * Not with 1GiB backing: a 1GiB region is zapped in one hold.
	 */
	holds = DIV_ROUND_UP(test_size >> 21, vm_batch(t->vm));
	if (mode != 0 && holds >= 16 && !gb_before)
		TEST_ASSERT(STAT(t, "collapse_max_hold_ns") * 4 <=
			    STAT(t, "collapse_time_ns"),
			    "%s: longest lock hold %lu ns of a %lu ns run that collapse_batch splits in %lu",
			    mode_names[mode], STAT(t, "collapse_max_hold_ns"),
			    STAT(t, "collapse_time_ns"), holds);

	pass(t, 4, false);
	after = huge_2m(t);
	ksft_print_msg("restore [%s]: huge 2MiB regions %lu before, %lu logging, %lu after\n",
		       mode_names[mode], before, split, after);
	ksft_print_msg("restore [%s]: 1GiB mappings: %lu before logging, %lu after\n",
		       mode_names[mode], gb_before, STAT(t, "pages_1g"));
	ksft_print_msg("restore [%s]: %lu SPTEs zapped in %lu us, batch %u, longest hold %lu us\n",
		       mode_names[mode], sptes, STAT(t, "collapse_time_ns") / 1000,
		       vm_batch(t->vm), STAT(t, "collapse_max_hold_ns") / 1000);
	TEST_ASSERT(after >= before,
		    "%s: only %lu 2MiB regions mapped huge again, %lu before logging",
		    mode_names[mode], after, before);
	/* 1GiB backing: the 1GiB mappings come back, not 2MiB ones. */
	TEST_ASSERT(STAT(t, "pages_1g") >= gb_before,
		    "%s: %lu 1GiB mappings again, %lu before logging",
		    mode_names[mode], STAT(t, "pages_1g"), gb_before);
	free_test_vm(t);
}

/*
 * Check the pass that wrote @iter to every page: each page holds what the
 * guest wrote, and, if logging was on, each page is in the dirty log.
 */
static void check_pass(struct test_vm *t, uint64_t iter, bool logging)
{
	uint64_t i, npages = t->size / PAGE_SIZE, missed = 0;
	uint64_t *hva = addr_gpa2hva(t->vm, TEST_GPA);

	if (logging)
		kvm_vm_get_dirty_log(t->vm, TEST_SLOT, t->bitmap);
	for (i = 0; i < npages; i++) {
		uint64_t v = hva[i * PAGE_SIZE / sizeof(*hva)];

		TEST_ASSERT(v == (iter << 32 | i),
			    "Page %lu holds 0x%lx, the guest wrote 0x%lx",
			    i, v, iter << 32 | i);
		if (logging && !test_bit(i, t->bitmap))
			missed++;
	}
	TEST_ASSERT(!missed, "%lu of %lu written pages missing from the dirty log",
		    missed, npages);
}

/*
 * races: each iteration dirties the slot with logging on, checks the dirty
 * log and the memory, stops logging, then does something random while the
 * collapse is pending or running, sometimes with the vCPUs faulting memory
 * back in at the same time.
 */
static void test_races(void)
{
	struct test_vm *t = create_test_vm(race_size, false);
	uint64_t stops = 0, iter = 1;
	bool logging = false;
	char buf[16];
	int i, j;

	/* One 2MiB region per lock hold: the worker runs for long. */
	vm_set(t->vm, "collapse_batch", "1");
	pass(t, iter, true);
	check_pass(t, iter, false);

	for (i = 0; i < iterations; i++) {
		int action = rand() % 8;

		if (!logging) {
			set_logging(t, TEST_SLOT, true);
			logging = true;
		}
		/* Clear what earlier passes left in the log. */
		kvm_vm_get_dirty_log(t->vm, TEST_SLOT, t->bitmap);
		pass(t, ++iter, true);
		check_pass(t, iter, true);

		snprintf(buf, sizeof(buf), "%u", rand() % 5);
		vm_set(t->vm, "collapse_delay_ms", buf);
		set_logging(t, TEST_SLOT, false);
		logging = false;
		stops++;
		pr_debug("races: iteration %d, action %d\n", i, action);

		switch (action) {
		case 0:	/* let it run, with the guest faulting pages back */
			pass(t, iter, false);
			break;
		case 1:	/* re-enable logging at once, maybe mid-collapse */
			usleep(rand() % 3000);
			set_logging(t, TEST_SLOT, true);
			logging = true;
			/* The ioctl itself drops the pending collapse. */
			TEST_ASSERT_EQ(STAT(t, "collapse_pending_slots"), 0);
			break;
		case 2:	/* collapse_now storm, with the guest reading */
			pass_start(t, iter, false);
			for (j = 0; j < 10; j++) {
				vm_set(t->vm, "collapse_now", "1");
				usleep(rand() % 500);
			}
			pass_wait(t);
			break;
		case 3:	/* switch modes back and forth */
			for (j = 0; j < 6; j++) {
				vm_set(t->vm, "collapse_mode", mode_names[rand() % 3]);
				usleep(rand() % 1000);
			}
			break;
		case 4:	/* move the slot away and back: memory must not change */
			usleep(rand() % 3000);
			vm_mem_region_move(t->vm, TEST_SLOT, MOVED_GPA);
			vm_mem_region_move(t->vm, TEST_SLOT, TEST_GPA);
			TEST_ASSERT_EQ(STAT(t, "collapse_pending_slots"), 0);
			check_pass(t, iter, false);
			break;
		case 5:	/* delete and re-create the slot (fresh memory) */
			usleep(rand() % 3000);
			vm_mem_region_delete(t->vm, TEST_SLOT);
			TEST_ASSERT_EQ(STAT(t, "collapse_pending_slots"), 0);
			add_test_slot(t, TEST_GPA);
			pass(t, iter, true);
			break;
		case 6:	/* batch size changes under the worker */
			for (j = 0; j < 5; j++) {
				snprintf(buf, sizeof(buf), "%u", 1 + rand() % 4);
				vm_set(t->vm, "collapse_batch", buf);
				usleep(rand() % 1000);
			}
			break;
		case 7:	/* a stop while the guest is still writing */
			pass(t, iter, true);
			check_pass(t, iter, false);
			break;
		}
		TEST_ASSERT(STAT(t, "collapse_pending_slots") <= 1,
			    "More pending slots than slots");
	}

	/* Finish: every stop ended as exactly one run or one cancel. */
	if (logging) {
		set_logging(t, TEST_SLOT, false);
		stops++;
	}
	vm_set(t->vm, "collapse_mode", "sync");
	TEST_ASSERT(wait_no_pending(t, 300), "Collapse still pending after 300 s");
	ksft_print_msg("races: %lu stops: %lu runs, %lu cancelled\n", stops,
		       STAT(t, "collapse_runs"), STAT(t, "collapse_cancelled"));
	TEST_ASSERT_EQ(STAT(t, "collapse_runs") + STAT(t, "collapse_cancelled"),
		       stops);
	pass(t, ++iter, true);
	check_pass(t, iter, false);
	free_test_vm(t);
}

/*
 * teardown: destroy VMs with a collapse pending, queued or running, and
 * through a debugfs file that holds the last reference to the VM.
 */
static void test_teardown(void)
{
	int i;

	for (i = 0; i < iterations; i++) {
		struct test_vm *t = create_test_vm(race_size, false);
		int action = rand() % 4, fd = -1;

		vm_set(t->vm, "collapse_batch", "1");
		vm_set(t->vm, "collapse_delay_ms", "0");
		if (action == 0)
			vm_set(t->vm, "collapse_mode", "ondemand");
		pass(t, 1, true);
		set_logging(t, TEST_SLOT, true);
		pass(t, 2, true);
		if (action == 3) {
			fd = open(vm_file(t->vm, "collapse_now"), O_WRONLY);
			TEST_ASSERT(fd >= 0, "open collapse_now");
		}
		set_logging(t, TEST_SLOT, false);
		if (action == 2)
			vm_set(t->vm, "collapse_now", "1");
		usleep(rand() % 3000);
		pr_debug("teardown: iteration %d, action %d\n", i, action);
		free_test_vm(t);
		if (fd >= 0) {
			/* The VM lives on through this file until it is closed. */
			TEST_ASSERT(write(fd, "1", 1) == 1, "collapse_now after free");
			usleep(rand() % 3000);
			close(fd);
		}
	}
}

struct bad_input {
	const char *val;
	int err;
};

/* Bad input common to the numeric knobs. */
static const struct bad_input bad_uint[] = {
	{ "\n", EINVAL }, { "abc", EINVAL }, { "12abc", EINVAL },
	{ "-1", EINVAL }, { "1 2", EINVAL }, { "0x10", EINVAL },
	{ "+5", EINVAL }, { " 5", EINVAL }, { "5 ", EINVAL },
	{ "1.5", EINVAL }, { "5\n\n", EINVAL },
	{ "99999999999999999999", ERANGE }, { "4294967296", ERANGE },
};

static const struct bad_input bad_mode[] = {
	{ "\n", EINVAL }, { "syncx", EINVAL }, { "sync deferred", EINVAL },
	{ "SYNC", EINVAL }, { " sync", EINVAL }, { "sync ", EINVAL },
	{ "deferred\n\n", EINVAL }, { "1", EINVAL }, { "-1", EINVAL },
	{ "ondemand\nx", EINVAL }, { "sync,deferred", EINVAL },
	{ "[sync]", EINVAL },
};

static void check_bad(const char *path, const struct bad_input *bad, int n,
		      const char *extra, int extra_err)
{
	char before[64], after[64];
	int i, r;

	read_file(path, before, sizeof(before));
	for (i = 0; i <= n; i++) {
		const char *val = i < n ? bad[i].val : extra;
		int err = i < n ? bad[i].err : extra_err;

		if (!val)
			continue;
		r = write_file(path, val);
		TEST_ASSERT(r == -err, "%s <- '%s': got %d, want %d", path,
			    val, r, -err);
		read_file(path, after, sizeof(after));
		TEST_ASSERT(!strcmp(before, after),
			    "%s changed from '%s' to '%s' by bad input '%s'",
			    path, before, after, val);
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

static void check_uint_knob(const char *path, const char *max, const char *over,
			    bool zero_ok)
{
	char want[32];

	check_bad(path, bad_uint, ARRAY_SIZE(bad_uint), over, ERANGE);
	if (!zero_ok)
		check_bad(path, bad_uint, 0, "0", ERANGE);
	snprintf(want, sizeof(want), "%s\n", max);
	check_good(path, max, want);
	check_good(path, zero_ok ? "0" : "1", zero_ok ? "0\n" : "1\n");
	check_good(path, "17\n", "17\n");
}

static void test_knobs(void)
{
	static const char * const params[] = {
		"collapse_mode", "collapse_delay_ms", "collapse_batch"
	};
	char saved[3][64], buf[64], path[128];
	struct test_vm *t;
	const char *now;
	int i;

	for (i = 0; i < 3; i++) {
		snprintf(path, sizeof(path), PARAM_DIR "%s", params[i]);
		read_file(path, saved[i], sizeof(saved[i]));
		saved[i][strcspn(saved[i], "\n")] = '\0';
	}

	/* Module parameters. */
	check_bad(PARAM_DIR "collapse_mode", bad_mode, ARRAY_SIZE(bad_mode),
		  NULL, 0);
	check_good(PARAM_DIR "collapse_mode", "ondemand\n", "ondemand\n");
	check_good(PARAM_DIR "collapse_mode", "sync", "sync\n");
	check_uint_knob(PARAM_DIR "collapse_delay_ms", "3600000", "3600001", true);
	check_uint_knob(PARAM_DIR "collapse_batch", "262144", "262145", false);

	/* A new VM takes the parameters as its defaults. */
	write_file(PARAM_DIR "collapse_mode", "ondemand");
	write_file(PARAM_DIR "collapse_delay_ms", "1234");
	write_file(PARAM_DIR "collapse_batch", "56");
	t = create_test_vm(4 << 20, false);
	read_file(vm_file(t->vm, "collapse_mode"), buf, sizeof(buf));
	TEST_ASSERT(!strcmp(buf, "sync deferred [ondemand]\n"),
		    "collapse_mode of a new VM reads '%s'", buf);
	read_file(vm_file(t->vm, "collapse_delay_ms"), buf, sizeof(buf));
	TEST_ASSERT(!strcmp(buf, "1234\n"), "collapse_delay_ms '%s'", buf);
	read_file(vm_file(t->vm, "collapse_batch"), buf, sizeof(buf));
	TEST_ASSERT(!strcmp(buf, "56\n"), "collapse_batch '%s'", buf);

	/* Restore the parameters: a VM's knobs do not follow them. */
	for (i = 0; i < 3; i++) {
		snprintf(path, sizeof(path), PARAM_DIR "%s", params[i]);
		snprintf(buf, sizeof(buf), "%s\n", saved[i]);
		check_good(path, saved[i], buf);
	}
	read_file(vm_file(t->vm, "collapse_batch"), buf, sizeof(buf));
	TEST_ASSERT(!strcmp(buf, "56\n"), "collapse_batch followed the parameter");

	/* Per-VM debugfs files. */
	check_bad(vm_file(t->vm, "collapse_mode"), bad_mode,
		  ARRAY_SIZE(bad_mode), "deferredx", EINVAL);
	check_good(vm_file(t->vm, "collapse_mode"), "sync\n",
		   "[sync] deferred ondemand\n");
	check_good(vm_file(t->vm, "collapse_mode"), "deferred",
		   "sync [deferred] ondemand\n");
	check_uint_knob(vm_file(t->vm, "collapse_delay_ms"), "3600000",
			"3600001", true);
	check_uint_knob(vm_file(t->vm, "collapse_batch"), "262144", "262145",
			false);

	/*
	 * collapse_now takes "1" and nothing else; a bad write must not
	 * collapse the slot left pending in ondemand mode.
	 */
	vm_set(t->vm, "collapse_mode", "ondemand");
	pass(t, 1, true);
	set_logging(t, TEST_SLOT, true);
	pass(t, 2, true);
	set_logging(t, TEST_SLOT, false);
	TEST_ASSERT_EQ(STAT(t, "collapse_pending_slots"), 1);
	now = vm_file(t->vm, "collapse_now");
	{
		static const char * const bad_now[] = {
			"\n", "0", "2", "yes", "1 1", "-1", "11", "1x", "+1",
			"4294967297", "99999999999999999999", " 1",
		};

		for (i = 0; i < ARRAY_SIZE(bad_now); i++) {
			int r = write_file(now, bad_now[i]);

			TEST_ASSERT(r == -EINVAL, "collapse_now <- '%s': %d",
				    bad_now[i], r);
		}
	}
	usleep(200000);
	TEST_ASSERT_EQ(STAT(t, "collapse_pending_slots"), 1);
	TEST_ASSERT_EQ(STAT(t, "collapse_runs"), 0);
	vm_set(t->vm, "collapse_now", "1\n");
	TEST_ASSERT(wait_no_pending(t, 300), "collapse_now did nothing");
	TEST_ASSERT_EQ(STAT(t, "collapse_runs"), 1);
	free_test_vm(t);
}

static const struct {
	const char *name;
	void (*fn)(void);
} subtests[] = {
	{ "knobs", test_knobs },
	{ "restore", test_restore },
	{ "stoptime", test_stoptime },
	{ "races", test_races },
	{ "teardown", test_teardown },
};

static void help(const char *name)
{
	puts("");
	printf("usage: %s [-h] [-t subtest] [-b size] [-r size] [-s backing]\n"
	       "          [-v vcpus] [-i iterations] [-n stops] [-S seed] [-B batch]\n",
	       name);
	puts(" -t: run only this subtest (knobs, restore, stoptime, races,");
	puts("     teardown); may be repeated. Default: all");
	puts(" -b: size of the large slot of stoptime and restore (default 1G)");
	puts(" -r: size of the slot of races and teardown (default 64M)");
	backing_src_help("-s");
	puts(" -v: vCPUs touching memory (default 2)");
	puts(" -i: iterations of races and teardown (default 20)");
	printf(" -n: stops of each slot stoptime takes the fastest of (default 5,\n"
	       "     at most %d)\n", MAX_STOPS);
	puts(" -S: random seed (default: time)");
	puts(" -B: collapse_batch of the restore VM (default: kvm.collapse_batch)");
	puts("");
	exit(0);
}

int main(int argc, char *argv[])
{
	const char *only[ARRAY_SIZE(subtests)];
	int nr_only = 0, opt, i, j, n = 0, try;

	seed = time(NULL);
	while ((opt = getopt(argc, argv, "ht:b:r:s:v:i:n:S:B:")) != -1) {
		switch (opt) {
		case 't':
			TEST_ASSERT(nr_only < ARRAY_SIZE(only), "Too many -t");
			only[nr_only++] = optarg;
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
			seed = strtoul(optarg, NULL, 0);
			break;
		case 'B':
			restore_batch = optarg;
			break;
		case 'h':
		default:
			help(argv[0]);
		}
	}
	TEST_ASSERT(!(test_size % (2 << 20)) && !(race_size % (2 << 20)),
		    "Sizes must be multiples of 2MiB");

	ksft_print_header();
	for (i = 0; i < ARRAY_SIZE(subtests); i++)
		for (j = 0; j < nr_only; j++)
			if (!strcmp(only[j], subtests[i].name))
				n++;
	ksft_set_plan(nr_only ? n : ARRAY_SIZE(subtests));
	require_lazy_collapse();
	ksft_print_msg("seed %u, backing %s\n", seed,
		       vm_mem_backing_src_alias(backing)->name);

	for (i = 0; i < ARRAY_SIZE(subtests); i++) {
		int status;
		pid_t pid;

		for (j = 0; j < nr_only; j++)
			if (!strcmp(only[j], subtests[i].name))
				break;
		if (nr_only && j == nr_only)
			continue;

		for (try = 1; try <= SHUTDOWN_TRIES; try++) {
			pid_t parent = getpid();

			/*
			 * A failed TEST_ASSERT exits: run subtests in a child,
			 * which dies with the parent (say, killed by timeout).
			 */
			pid = fork();
			TEST_ASSERT(pid >= 0, "fork");
			if (!pid) {
				TEST_ASSERT(!prctl(PR_SET_PDEATHSIG, SIGKILL),
					    "PR_SET_PDEATHSIG");
				if (getppid() != parent)
					exit(1);
				srand(seed + i);
				subtests[i].fn();
				exit(0);
			}
			TEST_ASSERT(waitpid(pid, &status, 0) == pid, "waitpid");
			if (!WIFEXITED(status) ||
			    WEXITSTATUS(status) != SHUTDOWN_RETRY)
				break;
			ksft_print_msg("%s: guest shut down (try %d of %d)\n",
				       subtests[i].name, try, SHUTDOWN_TRIES);
		}
		ksft_test_result(WIFEXITED(status) && !WEXITSTATUS(status),
				 "%s\n", subtests[i].name);
	}
	ksft_finished();
	return 0;
}
