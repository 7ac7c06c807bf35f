/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * What the lazy huge page collapse tests need from the selftest library that
 * it spells differently across the kernels the series targets: since Linux
 * 6.13 a VM keeps its binary stats in vm->stats (kvm_get_stat(), closed by
 * kvm_vm_release()); 6.12 has vm->stats_fd and __vm_get_stat().
 */
#ifndef SELFTEST_KVM_LAZY_COLLAPSE_H
#define SELFTEST_KVM_LAZY_COLLAPSE_H

#include "kvm_util.h"

#ifdef __get_stat
#define lc_vm_get_stat(vm, name, data, max) \
	kvm_get_stat(&(vm)->stats, name, data, max)

static inline void lc_vm_close_stats(struct kvm_vm *vm)
{
}
#else
#define lc_vm_get_stat(vm, name, data, max) \
	__vm_get_stat(vm, name, data, max)

/* kvm_vm_release() leaves the stats fd, which holds a reference to the VM. */
static inline void lc_vm_close_stats(struct kvm_vm *vm)
{
	if (vm->stats_fd) {
		close(vm->stats_fd);
		vm->stats_fd = 0;
	}
}
#endif

#endif /* SELFTEST_KVM_LAZY_COLLAPSE_H */
