// SPDX-License-Identifier: GPL-2.0
/*
 * The guest of the QEMU scenario (scripts/vmm/): a multiboot (v1) payload
 * that QEMU boots with -kernel in no time, where a Linux guest would take
 * minutes under nested emulation.  In long mode, memory identity-mapped
 * with 4 KiB pages, it writes every 4 KiB page from 8 MiB to the top of its memory
 * in turn, forever, and checks what it wrote in the previous pass: each
 * page holds its index, the pass number and its complement.  It reports
 * in memory, at physical address STATUS, read by scripts/vmm/scenario.py
 * through QEMU's monitor: the number of passes done, or, at the first
 * page that does not hold what it wrote (a write lost or a page mapped
 * wrongly across splitting and collapsing), where and what, and then it
 * stops.  No port I/O while it runs (QEMU 7.2's emulation of SVM, under
 * which CI runs this, garbled a guest across I/O exits with a thread per
 * vCPU): it exits to KVM only for CPUID, every 16 MiB, and for KVM's own
 * page tables (dirty logging).  The serial port only gets a banner and
 * the report of a bad page.
 */
#define MB_MAGIC	0x1BADB002u
#define MB_FLAGS	0x00000003u	/* page-aligned modules, memory info */
#define START		(8ul << 20)
#define PAGE		4096u
#define COM1		0x3f8
#define STATUS		0x500	/* in the BIOS data area's free space */
#define STATUS_MAGIC	0x4c415a59u	/* "LAZY" */

/* magic, passes done, bad page: index + 1 (0: none), its two words. */
static volatile unsigned int * const status = (unsigned int *)STATUS;

__attribute__((section(".multiboot"), used, aligned(4)))
static const unsigned int mb_header[3] = {
	MB_MAGIC, MB_FLAGS, -(MB_MAGIC + MB_FLAGS)
};

/*
 * Multiboot enters in 32-bit protected mode without paging.  Go to long
 * mode, as KVM selftest guests run: identity-map the first 4 GiB with
 * 2 MiB pages, enable PAE, EFER.LME and paging, and jump to 64-bit code.
 * (In 32-bit mode without paging, QEMU 7.2's emulation of SVM garbled
 * this guest within seconds of dirty logging, on unmodified kernels too.)
 */
asm(".pushsection .text\n"
    ".code32\n"
    ".globl _start\n"
    "_start:\n"
    "	mov $stack_top, %esp\n"
    "	mov %ebx, mbi\n"
    "	mov $pdpt + 3, %eax\n"
    "	mov %eax, pml4\n"
    "	xor %ecx, %ecx\n"
    "1:	mov %ecx, %eax\n"		/* pdpt[i] = pd + i * 4096 | RW | P */
    "	shl $12, %eax\n"
    "	add $pd + 3, %eax\n"
    "	mov %eax, pdpt(,%ecx,8)\n"
    "	inc %ecx\n"
    "	cmp $4, %ecx\n"
    "	jb 1b\n"
    "	xor %ecx, %ecx\n"
    "2:	mov %ecx, %eax\n"		/* pd[j] = j << 21 | PS | RW | P */
    "	shl $21, %eax\n"
    "	or $0x83, %eax\n"
    "	mov %eax, pd(,%ecx,8)\n"
    "	mov %ecx, %eax\n"
    "	shr $11, %eax\n"
    "	mov %eax, pd + 4(,%ecx,8)\n"
    "	inc %ecx\n"
    "	cmp $2048, %ecx\n"
    "	jb 2b\n"
    "	mov %cr4, %eax\n"
    "	or $0x20, %eax\n"		/* PAE */
    "	mov %eax, %cr4\n"
    "	mov $pml4, %eax\n"
    "	mov %eax, %cr3\n"
    "	mov $0xc0000080, %ecx\n"	/* EFER.LME */
    "	rdmsr\n"
    "	or $0x100, %eax\n"
    "	wrmsr\n"
    "	mov %cr0, %eax\n"
    "	or $0x80000001, %eax\n"	/* PG, PE */
    "	mov %eax, %cr0\n"
    "	lgdt gdt_desc\n"
    "	ljmp $8, $start64\n"
    ".code64\n"
    "start64:\n"
    "	mov $16, %eax\n"
    "	mov %eax, %ds\n"
    "	mov %eax, %es\n"
    "	mov %eax, %ss\n"
    "	mov $stack_top, %rsp\n"
    "	mov mbi, %edi\n"
    "	call guest_main\n"
    "3:	cli\n"
    "	hlt\n"
    "	jmp 3b\n"
    ".popsection\n"
    ".pushsection .data\n"
    ".align 16\n"
    "gdt:	.quad 0, 0x00af9a000000ffff, 0x00cf92000000ffff\n"
    "gdt_desc:\n"
    "	.word gdt_desc - gdt - 1\n"
    "	.long gdt\n"
    "mbi:	.long 0\n"
    ".popsection\n"
    ".pushsection .bss\n"
    ".align 4096\n"
    "pml4:	.skip 4096\n"
    "pdpt:	.skip 4096\n"
    "pd:	.skip 4 * 4096\n"
    "	.skip 16384\n"
    "stack_top:\n"
    ".popsection\n");

static inline void outb(unsigned short port, unsigned char v)
{
	asm volatile("outb %0, %1" : : "a"(v), "Nd"(port));
}

/*
 * CPUID always exits to KVM, which handles it in the kernel.  A guest that
 * never exits is unlike any real one (which takes timer interrupts), and
 * under TCG the test VM's vCPU then sometimes ran this guest for minutes
 * without taking its own interrupts, so that its clock jumped and its
 * soft-lockup detector fired.
 */
static inline void exit_to_kvm(void)
{
	unsigned int a = 0, b, c = 0, d;

	asm volatile("cpuid" : "+a"(a), "=b"(b), "+c"(c), "=d"(d));
}

static inline unsigned char inb(unsigned short port)
{
	unsigned char v;

	asm volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}

static void putc(char c)
{
	while (!(inb(COM1 + 5) & 0x20))
		;
	outb(COM1, c);
}

static void puts(const char *s)
{
	while (*s)
		putc(*s++);
}

static void putu(unsigned int v)
{
	char buf[11];
	int i = sizeof(buf);

	buf[--i] = 0;
	do {
		buf[--i] = '0' + v % 10;
		v /= 10;
	} while (v);
	puts(buf + i);
}

/*
 * Map [0, end) again with 4 KiB pages, at TABLES, and switch to that.
 * QEMU 7.2 caches a nested guest's translation at the size of the
 * guest's page even where KVM's nested page table maps 4 KiB (as it
 * does under dirty logging), so with 2 MiB guest pages the guest soon
 * writes where it should not.  KVM selftest guests use 4 KiB pages too.
 */
#define TABLES		(4ul << 20)
#define PTE		0x3ul	/* present, writable */

static unsigned long map_4k(unsigned long end)
{
	unsigned long *pml4 = (unsigned long *)TABLES;
	unsigned long *pdpt = pml4 + 512;
	unsigned long *pd = pdpt + 512;		/* 4 pages: 4 GiB */
	unsigned long *pt = pd + 4 * 512;
	unsigned long max = (START - (unsigned long)pt) / 8 * PAGE;
	unsigned long a, i;

	if (end > max)
		end = max & ~0x1ffffful;
	for (i = 0; i < 512 * 7; i++)
		pml4[i] = 0;
	pml4[0] = (unsigned long)pdpt | PTE;
	for (i = 0; i < 4; i++)
		pdpt[i] = (unsigned long)(pd + i * 512) | PTE;
	for (a = 0; a < end; a += PAGE)
		pt[a / PAGE] = a | PTE;
	for (a = 0; a < end; a += 512 * PAGE)
		pd[a / (512 * PAGE)] = (unsigned long)(pt + a / PAGE) | PTE;
	asm volatile("mov %0, %%cr3" : : "r"(pml4) : "memory");
	return end;
}

void guest_main(const unsigned int *mbi);

void guest_main(const unsigned int *mbi)
{
	/* mbi[2]: KiB of memory above 1 MiB (flag bit 0 set by QEMU). */
	unsigned long end = (0x100000ul + mbi[2] * 1024ul) & ~0x1ffffful;
	unsigned long p;
	unsigned int pass;

	end = map_4k(end);

	status[1] = 0;
	status[2] = 0;
	status[0] = STATUS_MAGIC;
	puts("guest: touching ");
	putu((end - START) >> 20);
	puts(" MiB\n");
	for (pass = 1; ; pass++) {
		for (p = START; p < end; p += PAGE) {
			volatile unsigned int *w = (volatile unsigned int *)p;
			unsigned int idx = (p - START) / PAGE;

			if (pass > 1 && (w[0] != idx || w[1] != pass - 1 ||
					 w[512] != ~(pass - 1))) {
				status[3] = w[0];
				status[4] = w[1];
				status[2] = idx + 1;
				puts("BAD page ");
				putu(idx);
				puts(" pass ");
				putu(pass);
				puts(": holds ");
				putu(w[0]);
				puts(" ");
				putu(w[1]);
				puts("\n");
				return;
			}
			w[0] = idx;
			w[1] = pass;
			w[512] = ~pass;
			/* Exit to KVM every 16 MiB: see exit_to_kvm(). */
			if (!(idx & 4095))
				exit_to_kvm();
		}
		status[1] = pass;
	}
}
