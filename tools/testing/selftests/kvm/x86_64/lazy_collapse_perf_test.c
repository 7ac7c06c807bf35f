// SPDX-License-Identifier: GPL-2.0-only
/*
 * Cost of stopping dirty logging, and of getting huge pages back afterwards.
 *
 * A live migration in miniature: vCPUs write their memory without pause,
 * huge pages mapped; dirty logging starts on every test slot, the host
 * fetches the dirty log a few times, then logging stops on every slot, as
 * when a migration fails and the VM stays where it is.  Reported, for the
 * VM's collapse mode (or for a kernel without lazy collapse, "upstream"):
 *
 *  - how long the ioctls that clear KVM_MEM_LOG_DIRTY_PAGES took, the
 *    longest one and all slots together;
 *  - how long until the huge pages (pages_2m) were back to the count before
 *    logging, from the stop, and how many page faults (pf_fixed) and remote
 *    TLB flushes (remote_tlb_flush_requests) that took;
 *  - what the guest paid: pages written per second from the start of the
 *    collapse (the ioctl in sync mode, the end of the delay in deferred
 *    mode, collapse_now in ondemand mode) until the huge pages were back,
 *    and in the lazy modes from the stop until the collapse started (on
 *    split mappings), against the same run's steady state before logging;
 *  - the longest single mmu_lock hold, how long the collapse held it in
 *    all and how many times it took it (collapse_max_hold_ns,
 *    collapse_time_ns, collapse_holds);
 *  - pages_2m over time from the stop, sampled every 10 ms ("curve").
 *
 * It asserts nothing about timing: it is a benchmark (see
 * scripts/bench.sh); lazy_collapse_test holds the pass/fail checks.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <linux/bitmap.h>

#include "kvm_util.h"
#include "lazy_collapse.h"
#include "processor.h"
#include "test_util.h"
#include "ucall_common.h"

#define TEST_SLOT	10
#define TEST_GPA	(4ULL << 30)
#define HPAGE_SIZE	(2UL << 20)
#define MAX_VCPUS	16
#define MAX_SLOTS	64
#define SAMPLE_US	10000
#define MAX_SAMPLES	200000

/* Shared with the guest. */
static uint64_t guest_written[MAX_VCPUS];
static bool guest_stop;

static uint64_t test_size = 256ULL << 20;
static int nr_vcpus = 2;
static int nr_slots = 1;
static int log_rounds = 2;
static const char *mode_arg;
static uint64_t delay_ms = 1000;
static const char *batch_arg;
static unsigned int ondemand_pause_ms = 1000;
static unsigned int steady_ms = 1000;
static unsigned int timeout_s = 600;
static enum vm_mem_backing_src_type backing = VM_MEM_SRC_ANONYMOUS_THP;

/*
 * vCPU @id writes one word of every 4KiB page of its share of the test
 * memory, over and over, and counts the pages written.
 */
static void guest_code(uint64_t id, uint64_t gva, uint64_t npages)
{
	uint64_t i, n = 0;

	while (!READ_ONCE(guest_stop)) {
		for (i = 0; i < npages; i++) {
			WRITE_ONCE(*(uint64_t *)(gva + i * PAGE_SIZE), n + i);
			if (!(i & 63))
				WRITE_ONCE(guest_written[id], n + i);
		}
		n += npages;
		WRITE_ONCE(guest_written[id], n);
	}
	GUEST_DONE();
}

struct bench {
	struct kvm_vm *vm;
	struct kvm_vcpu *vcpus[MAX_VCPUS];
	pthread_t threads[MAX_VCPUS];
	int stats_fds[MAX_VCPUS];
	uint64_t *written[MAX_VCPUS];	/* guest_written[], host view */
	uint64_t pages_per_vcpu;
	uint64_t slot_size;
	bool lazy;			/* KVM_CAP_X86_HUGE_PAGE_COLLAPSE */
	const char *mode;
};

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000UL + ts.tv_nsec;
}

static void *vcpu_thread(void *arg)
{
	struct kvm_vcpu *vcpu = arg;
	struct ucall uc;

	vcpu_run(vcpu);
	switch (get_ucall(vcpu, &uc)) {
	case UCALL_DONE:
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

static void vm_debugfs_set(struct kvm_vm *vm, const char *name,
			   const char *val)
{
	char path[256];
	FILE *f;

	snprintf(path, sizeof(path), "/sys/kernel/debug/kvm/%d-%d/%s",
		 getpid(), vm->fd, name);
	f = fopen(path, "w");
	TEST_ASSERT(f, "open(%s): %s", path, strerror(errno));
	TEST_ASSERT(fputs(val, f) >= 0 && !fclose(f), "%s <- %s: %s", name,
		    val, strerror(errno));
}

/* A VM statistic, or 0 on a kernel that does not have it. */
static uint64_t vm_stat(struct bench *b, const char *name)
{
	uint64_t v = 0;

	/* A kernel without the series has none of its statistics. */
	if (!b->lazy && !strncmp(name, "collapse_", strlen("collapse_")))
		return 0;
	lc_vm_get_stat(b->vm, name, &v, 1);
	return v;
}

static uint64_t vcpu_stat_sum(struct bench *b, const char *name)
{
	struct kvm_stats_header header;
	struct kvm_stats_desc *descs, *d;
	uint64_t sum = 0, v;
	int i, j;

	for (i = 0; i < nr_vcpus; i++) {
		read_stats_header(b->stats_fds[i], &header);
		descs = read_stats_descriptors(b->stats_fds[i], &header);
		for (j = 0; j < header.num_desc; j++) {
			d = get_stats_descriptor(descs, j, &header);
			if (strcmp(d->name, name))
				continue;
			read_stat_data(b->stats_fds[i], &header, d, &v, 1);
			sum += v;
		}
		free(descs);
	}
	return sum;
}

static uint64_t written(struct bench *b)
{
	uint64_t sum = 0;
	int i;

	for (i = 0; i < nr_vcpus; i++)
		sum += READ_ONCE(*b->written[i]);
	return sum;
}

/* Wait until every vCPU has written all of its pages @passes more times. */
static void wait_passes(struct bench *b, int passes)
{
	uint64_t start[MAX_VCPUS], end = now_ns() + timeout_s * 1000000000UL;
	int i;

	for (i = 0; i < nr_vcpus; i++)
		start[i] = READ_ONCE(*b->written[i]);
	for (i = 0; i < nr_vcpus; i++) {
		while (READ_ONCE(*b->written[i]) <
		       start[i] + passes * b->pages_per_vcpu) {
			TEST_ASSERT(now_ns() < end, "vCPU %d made no progress in %u s",
				    i, timeout_s);
			usleep(1000);
		}
	}
}

static void set_logging(struct bench *b, int slot, bool on)
{
	vm_mem_region_set_flags(b->vm, TEST_SLOT + slot,
				on ? KVM_MEM_LOG_DIRTY_PAGES : 0);
}

static void bench_create(struct bench *b)
{
	uint64_t npages = test_size / PAGE_SIZE;
	int i;

	b->lazy = kvm_has_cap(KVM_CAP_X86_HUGE_PAGE_COLLAPSE);
	b->vm = vm_create_with_vcpus(nr_vcpus, guest_code, b->vcpus);
	b->slot_size = test_size / nr_slots;
	for (i = 0; i < nr_slots; i++)
		vm_userspace_mem_region_add(b->vm, backing,
					    TEST_GPA + i * b->slot_size,
					    TEST_SLOT + i,
					    b->slot_size / PAGE_SIZE, 0);
	/* 2MiB guest mappings, as a guest kernel's direct map has. */
	virt_map_level(b->vm, TEST_GPA, TEST_GPA, test_size, PG_LEVEL_2M);
	b->pages_per_vcpu = npages / nr_vcpus;
	for (i = 0; i < nr_vcpus; i++) {
		vcpu_args_set(b->vcpus[i], 3, i,
			      TEST_GPA + i * b->pages_per_vcpu * PAGE_SIZE,
			      b->pages_per_vcpu);
		b->written[i] = addr_gva2hva(b->vm,
					     (uintptr_t)&guest_written[i]);
		b->stats_fds[i] = vcpu_get_stats_fd(b->vcpus[i]);
	}

	if (!b->lazy) {
		TEST_ASSERT(!mode_arg || !strcmp(mode_arg, "upstream"),
			    "-m %s: this kernel has no KVM_CAP_X86_HUGE_PAGE_COLLAPSE",
			    mode_arg);
		b->mode = "upstream";
		return;
	}
	TEST_ASSERT(!mode_arg || strcmp(mode_arg, "upstream"),
		    "-m upstream: this kernel has KVM_CAP_X86_HUGE_PAGE_COLLAPSE");
	/* As a VMM would: KVM_CAP_X86_HUGE_PAGE_COLLAPSE, before KVM_RUN. */
	{
		static const char * const modes[] = {
			[KVM_X86_COLLAPSE_SYNC]		= "sync",
			[KVM_X86_COLLAPSE_DEFERRED]	= "deferred",
			[KVM_X86_COLLAPSE_ONDEMAND]	= "ondemand",
		};
		struct kvm_enable_cap cap = {
			.cap = KVM_CAP_X86_HUGE_PAGE_COLLAPSE,
			.args = { KVM_X86_COLLAPSE_SET_DELAY, 0, delay_ms },
		};

		for (i = 0; mode_arg && i < ARRAY_SIZE(modes); i++) {
			if (strcmp(mode_arg, modes[i]))
				continue;
			cap.args[0] |= KVM_X86_COLLAPSE_SET_MODE;
			cap.args[1] = i;
			break;
		}
		TEST_ASSERT(!mode_arg || i < ARRAY_SIZE(modes),
			    "-m %s: no such mode", mode_arg);
		if (batch_arg) {
			cap.args[0] |= KVM_X86_COLLAPSE_SET_BATCH;
			cap.args[3] = atoi_positive("Batch", batch_arg);
		}
		vm_ioctl(b->vm, KVM_ENABLE_CAP, &cap);
	}
	if (mode_arg) {
		b->mode = mode_arg;
	} else {
		static char buf[64];
		FILE *f = fopen("/sys/module/kvm/parameters/collapse_mode", "r");

		TEST_ASSERT(f && fgets(buf, sizeof(buf), f), "collapse_mode");
		fclose(f);
		buf[strcspn(buf, "\n")] = '\0';
		b->mode = buf;
	}
}

static void run(void)
{
	/* Not static: the test binary's data is loaded into the guest too. */
	uint64_t *curve_t = calloc(MAX_SAMPLES, sizeof(uint64_t));
	uint64_t *curve_p = calloc(MAX_SAMPLES, sizeof(uint64_t));
	uint64_t stop_ns, stop_max = 0, stop_total = 0;
	uint64_t before, split, t0, t1, w0, w1, steady, pf0, pf_back;
	uint64_t flush0, flush_back;
	uint64_t stop_start, collapse_start = 0, w_collapse = 0, back = 0;
	uint64_t w_back = 0, end, p2m;
	unsigned long *bitmap;
	bool ondemand, deferred, triggered;
	struct bench b = {};
	int i, r, n = 0;

	TEST_ASSERT(curve_t && curve_p, "calloc");
	bench_create(&b);
	ondemand = !strcmp(b.mode, "ondemand");
	deferred = !strcmp(b.mode, "deferred");
	for (i = 0; i < nr_vcpus; i++)
		pthread_create(&b.threads[i], NULL, vcpu_thread, b.vcpus[i]);

	/* Steady state: every page mapped, huge where the backing allows. */
	wait_passes(&b, 2);
	before = vm_stat(&b, "pages_2m");
	TEST_ASSERT(before >= test_size / HPAGE_SIZE / 2,
		    "Only %lu of %lu 2MiB pages mapped huge: no THP/hugetlb?",
		    before, test_size / HPAGE_SIZE);
	t0 = now_ns();
	w0 = written(&b);
	usleep(steady_ms * 1000);
	steady = (written(&b) - w0) * 1000000000UL / (now_ns() - t0);

	/* "Migration": log, fetch the log log_rounds times, each after a pass. */
	bitmap = bitmap_zalloc(b.slot_size / PAGE_SIZE);
	for (i = 0; i < nr_slots; i++)
		set_logging(&b, i, true);
	for (r = 0; r < log_rounds; r++) {
		wait_passes(&b, 1);
		for (i = 0; i < nr_slots; i++)
			kvm_vm_get_dirty_log(b.vm, TEST_SLOT + i, bitmap);
	}
	wait_passes(&b, 1);
	split = vm_stat(&b, "pages_2m");

	/* The migration fails: stop logging on every slot. */
	pf0 = vcpu_stat_sum(&b, "pf_fixed");
	flush0 = vm_stat(&b, "remote_tlb_flush_requests");
	stop_start = now_ns();
	for (i = 0; i < nr_slots; i++) {
		t1 = now_ns();
		set_logging(&b, i, false);
		stop_ns = now_ns() - t1;
		stop_total += stop_ns;
		if (stop_ns > stop_max)
			stop_max = stop_ns;
	}
	t1 = now_ns();
	w1 = written(&b);
	if (!b.lazy || !strcmp(b.mode, "sync")) {
		collapse_start = stop_start;
		w_collapse = written(&b);
	}

	/* Sample pages_2m until the huge pages are back. */
	triggered = false;
	end = now_ns() + timeout_s * 1000000000UL;
	for (;;) {
		uint64_t now = now_ns();

		p2m = vm_stat(&b, "pages_2m");
		if (n < MAX_SAMPLES) {
			curve_t[n] = now - stop_start;
			curve_p[n++] = p2m;
		}
		/*
		 * The worker was queued with the delay: it starts then, or
		 * earlier if the statistics show it has (a small slot can be
		 * collapsed between two samples).
		 */
		if (!collapse_start && deferred &&
		    (now - stop_start >= delay_ms * 1000000UL ||
		     vm_stat(&b, "collapse_max_hold_ns"))) {
			collapse_start = now;
			w_collapse = written(&b);
		}
		if (ondemand && !triggered &&
		    now - t1 >= ondemand_pause_ms * 1000000UL) {
			collapse_start = now_ns();
			w_collapse = written(&b);
			vm_debugfs_set(b.vm, "collapse_now", "1");
			triggered = true;
		}
		if (collapse_start && p2m >= before &&
		    !vm_stat(&b, "collapse_pending_slots")) {
			back = now;
			w_back = written(&b);
			break;
		}
		TEST_ASSERT(now < end, "%s: %lu of %lu huge pages back after %u s",
			    b.mode, p2m, before, timeout_s);
		usleep(SAMPLE_US);
	}
	pf_back = vcpu_stat_sum(&b, "pf_fixed");
	flush_back = vm_stat(&b, "remote_tlb_flush_requests");

	WRITE_ONCE(*(bool *)addr_gva2hva(b.vm, (uintptr_t)&guest_stop), true);
	for (i = 0; i < nr_vcpus; i++)
		pthread_join(b.threads[i], NULL);

	for (i = 0; i < n; i++)
		printf("curve mode=%s size_mib=%lu backing=%s t_ms=%.1f pages_2m=%lu\n",
		       b.mode, test_size >> 20,
		       vm_mem_backing_src_alias(backing)->name,
		       curve_t[i] / 1e6, curve_p[i]);
	/* One "result" line of key=value pairs, for scripts/bench.sh. */
	printf("result mode=%s size_mib=%lu backing=%s vcpus=%d slots=%d",
	       b.mode, test_size >> 20, vm_mem_backing_src_alias(backing)->name,
	       nr_vcpus, nr_slots);
	printf(" stop_us=%.1f stop_total_us=%.1f", stop_max / 1e3,
	       stop_total / 1e3);
	printf(" back_ms=%.1f faults=%lu flushes=%lu", (back - stop_start) / 1e6,
	       pf_back - pf0, flush_back - flush0);
	printf(" pages_2m_before=%lu pages_2m_logging=%lu", before, split);
	printf(" steady_pps=%lu collapse_pps=%lu collapse_window_ms=%.1f",
	       steady, back > collapse_start ? (w_back - w_collapse) *
	       1000000000UL / (back - collapse_start) : 0,
	       (back - collapse_start) / 1e6);
	/* Lazy modes: what running on the split mappings until then cost. */
	printf(" split_pps=%lu split_window_ms=%.1f",
	       collapse_start > t1 ? (w_collapse - w1) * 1000000000UL /
	       (collapse_start - t1) : 0,
	       collapse_start > t1 ? (collapse_start - t1) / 1e6 : 0);
	printf(" max_hold_us=%.1f worker_ms=%.1f regions=%lu holds=%lu\n",
	       vm_stat(&b, "collapse_max_hold_ns") / 1e3,
	       vm_stat(&b, "collapse_time_ns") / 1e6,
	       vm_stat(&b, "collapse_regions"), vm_stat(&b, "collapse_holds"));

	for (i = 0; i < nr_vcpus; i++)
		close(b.stats_fds[i]);
	free(bitmap);
	free(curve_t);
	free(curve_p);
	kvm_vm_free(b.vm);
}

static void help(const char *name)
{
	printf("usage: %s [-b size] [-s backing] [-v vcpus] [-x slots] [-m mode]\n"
	       "          [-d delay_ms] [-B batch] [-r rounds] [-p pause_ms]\n"
	       "          [-w steady_ms] [-T timeout_s]\n", name);
	puts(" -b: test memory, split evenly over the slots (default 256M)");
	backing_src_help("-s");
	puts(" -v: vCPUs writing the memory (default 2)");
	puts(" -x: memslots (default 1)");
	puts(" -m: the VM's collapse mode (KVM_ENABLE_CAP): sync, deferred or");
	puts("     ondemand (default: kvm.collapse_mode); 'upstream' on a kernel");
	puts("     without KVM_CAP_X86_HUGE_PAGE_COLLAPSE");
	puts(" -d: the VM's collapse_delay_ms (default 1000)");
	puts(" -B: the VM's collapse_batch (default: kvm.collapse_batch)");
	puts(" -r: dirty log fetches before logging stops (default 2)");
	puts(" -p: ondemand: ms from the stop to collapse_now (default 1000)");
	puts(" -w: ms of steady state measured before logging (default 1000)");
	puts(" -T: give up after this many seconds of no progress (default 600)");
}

int main(int argc, char *argv[])
{
	int opt;

	while ((opt = getopt(argc, argv, "b:s:v:x:m:d:B:r:p:w:T:h")) != -1) {
		switch (opt) {
		case 'b':
			test_size = parse_size(optarg);
			break;
		case 's':
			backing = parse_backing_src_type(optarg);
			break;
		case 'v':
			nr_vcpus = atoi_positive("vCPUs", optarg);
			TEST_ASSERT(nr_vcpus <= MAX_VCPUS, "At most %d vCPUs",
				    MAX_VCPUS);
			break;
		case 'x':
			nr_slots = atoi_positive("Slots", optarg);
			TEST_ASSERT(nr_slots <= MAX_SLOTS, "At most %d slots",
				    MAX_SLOTS);
			break;
		case 'm':
			mode_arg = optarg;
			break;
		case 'd':

			delay_ms = atoi_non_negative("Delay", optarg);
			break;
		case 'B':
			batch_arg = optarg;
			break;
		case 'r':
			log_rounds = atoi_non_negative("Rounds", optarg);
			break;
		case 'p':
			ondemand_pause_ms = atoi_non_negative("Pause", optarg);
			break;
		case 'w':
			steady_ms = atoi_positive("Steady window", optarg);
			break;
		case 'T':
			timeout_s = atoi_positive("Timeout", optarg);
			break;
		case 'h':
		default:
			help(argv[0]);
			exit(opt == 'h' ? 0 : 1);
		}
	}
	TEST_ASSERT(test_size % (nr_slots * HPAGE_SIZE) == 0,
		    "-b must be a multiple of 2MiB per slot");
	TEST_ASSERT(backing == VM_MEM_SRC_ANONYMOUS_THP ||
		    backing == VM_MEM_SRC_ANONYMOUS_HUGETLB_2MB ||
		    backing == VM_MEM_SRC_ANONYMOUS_HUGETLB,
		    "-s: anonymous_thp or a 2MiB hugetlb backing");
	run();
	return 0;
}
