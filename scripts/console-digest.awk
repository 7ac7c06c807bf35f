#!/usr/bin/awk -f
# One line per kernel stack trace in a console log: who (a task and its
# state, a CPU, a panic) and its innermost frames, innermost first; then the
# locks each task held, from lockdep's "N locks held by" lists. For the
# summary of a VM that hung or crashed: CI shows only the tail of the run.
# Reads the kallsyms format ("func+0x1/0x2") and the one boot.sh names
# addresses with ("0xffffffff81000000 <func+0x1>"). Frames in <NMI> and
# <IRQ> sections (the dump's own) and idle CPUs are left out. Variables:
# max (traces, default 6), frames (per trace, default 10).
function flush() {
	# Frames the unwinder is sure of ("?" marks a guess), when it has any.
	if (nr > 0) out = rel
	# An idle CPU says nothing.
	if (intrace && nf > 0 && out !~ /(^|< )do_idle( <|$)/ && !(out in seen)) {
		seen[out] = 1
		if (nt < max)
			print "# trace: " who ": " out
		nt++
	}
	intrace = 0; nf = 0; out = ""; nr = 0; rel = ""
}
BEGIN {
	if (!max) max = 6
	if (!frames) frames = 10
}
{ sub(/\r$/, ""); sub(/^\[ *[0-9.]+\] /, "") }
/^Kernel panic - not syncing/ { flush(); who = "panic"; next }
/^(BUG: |Oops: |WARNING: CPU)/ { flush(); who = "oops"; next }
/NMI backtrace for cpu [0-9]+/ {
	flush(); who = "cpu " $NF; next
}
/^INFO: task .* blocked for more than/ {
	flush(); who = "hung task " $3; next
}
/^task:[^ ]+ +state:/ {
	flush()
	split($1, a, ":"); split($2, b, ":")
	who = "task " a[2] " (" b[2] ")"; next
}
/^CPU: [0-9]+ .*Comm: / {
	if (who ~ /^cpu / || who == "panic" || who == "oops") {
		c = $0; sub(/.*Comm: /, "", c); sub(/ .*/, "", c)
		who = who " (" c ")"
	}
	next
}
/^Call Trace:/ { flush(); intrace = 1; skip = 0; next }
intrace && /^ *<(NMI|IRQ)>/ { skip = 1; next }
intrace && /^ *<\/(NMI|IRQ)>/ { skip = 0; next }
# The registers of an NMI backtrace or an oops, inside its trace.
intrace && /^(RIP|Code|RSP|RAX|RDX|RBP|R10|R13|FS|CS|CR2|DR0|DR3|DR6|PKRU): / { next }
intrace && /^ *<TASK>/ { next }
intrace && /^ *<\/TASK>/ { flush(); next }
intrace {
	f = ""
	if ($0 ~ /^ *(\? )?0x[0-9a-f]+ <[A-Za-z_][A-Za-z0-9_.]*\+0x/) {
		match($0, /<[A-Za-z_][A-Za-z0-9_.]*\+0x/)
		f = substr($0, RSTART + 1, RLENGTH - 4)
	} else if (match($0, /^ +(\? )?[A-Za-z_][A-Za-z0-9_.]*\+0x[0-9a-f]+\/0x/)) {
		f = substr($0, RSTART, RLENGTH); sub(/^ *(\? )?/, "", f)
		sub(/\+0x.*/, "", f)
	} else if ($0 !~ /^ *(\? )?0x[0-9a-f]+$/) {
		flush(); next
	}
	# The scheduler's own frames say nothing a blocked task's state does not.
	if (f == "" || skip || f ~ /^(__schedule|schedule)$/) next
	if (nf < frames) out = out (nf ? " < " : "") f
	nf++
	if ($0 !~ /^ *\? /) {
		if (nr < frames) rel = rel (nr ? " < " : "") f
		nr++
	}
	next
}
/^[0-9]+ locks? held by / {
	holder = $(NF); sub(/:$/, "", holder); locks = ""; next
}
holder != "" && /^ *#[0-9]+: / {
	l = $0; sub(/^[^(]*\(/, "", l); sub(/\)\{.*/, "", l)
	at = $0; sub(/.*, at: /, "", at); sub(/\+0x.*/, "", at)
	locks = locks (locks ? "; " : "") l " at " at
	next
}
holder != "" {
	if (locks != "") print "# locks: " holder ": " locks
	holder = ""
}
END {
	flush()
	if (holder != "" && locks != "") print "# locks: " holder ": " locks
	if (nt > max) print "# trace: " nt - max " more in the console log"
}
