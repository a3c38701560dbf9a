/*
 * optiboot_sim runs an AVR bootloader (Optiboot) inside simavr, with UART0
 * on a pseudo-terminal, so host tools can talk to the real bootloader code
 * as they would talk to a board behind a USB serial adapter.
 *
 *   optiboot_sim [-m MCU] [-f HZ] [-b BOOTADDR] [-o FLASHFILE] [-s SPEED]
 *                [-p SPM_USEC] BOOT.hex
 *
 * What it does that a plain "simavr" run does not:
 *   - the core starts at the bootloader (BOOTRST): reset_pc = BOOTADDR;
 *   - MCUSR.EXTRF is set on every reset, as an external reset would,
 *     else Optiboot jumps straight to the application;
 *   - the simulation is paced to wall-clock time (SPEED 1 = real time,
 *     0 = as fast as possible), so the UART's baud timing is realistic;
 *   - a pty has no DTR line: opening the pty (seen with inotify IN_OPEN on
 *     the slave) resets the MCU, the way an Arduino's auto-reset does;
 *   - the UART line runs at the true frame rate with an ATmega's receive
 *     buffering and overruns (see struct wire), and page erase/write keep
 *     SPMEN set for SPM_USEC (default 4000), as a real chip's flash does;
 *   - when the core leaves the bootloader for the application, it is held
 *     (not executed) until the next reset, so the image just written (often
 *     random test data) cannot run and change the flash it is checked by;
 *     bytes the host sends meanwhile are dropped, as an application that
 *     ignores its UART would drop them.
 *
 * stdout carries only these lines (simavr's own messages go to stderr):
 *   port: /dev/pts/N          once, when the pty is ready
 *   reset: power-on|open|command  each reset
 *   app: 0xADDR               the core left the bootloader (now held)
 *   dumped: FILE              after a dump
 *   crashed: 0xPC             simavr stopped the core
 *   stats: rx=N tx=N overruns=N dropped=N behind=N cycles=N
 *                             answer to "stats": bytes host to MCU and MCU
 *                             to host, receive overruns, times the core
 *                             fell >20 ms behind the wall clock
 * stdin takes commands, one a line: "dump FILE", "stats", "reset", "quit".
 * End of stdin or SIGTERM/SIGINT ends the run; on the way out the flash is
 * written to FLASHFILE when -o is given. OPTIBOOT_SIM_TRACE=1 in the
 * environment traces every byte on the wire to stderr; OPTIBOOT_SIM_NOSKIP=1
 * turns spin skipping off (see struct spin).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <time.h>
#include <unistd.h>

#include "sim_avr.h"
#include "sim_hex.h"
#include "avr_uart.h"
#include "uart_pty.h"

DEFINE_FIFO(uint16_t, uart_fifo);
DEFINE_FIFO(uint8_t, uart_pty_fifo);

/* ATmega48/88/168/328 family data addresses. */
#define MCUSR_ADDR 0x54
#define EXTRF 1
#define SPMCSR_ADDR 0x57
#define SPMEN 0x01
#define PGERS 0x02
#define PGWRT 0x04
#define UCSR0C_ADDR 0xC2
#define UPM0_MASK 0x30
#define USBS0 0x08

/*
 * The wire. simavr 1.6's UART counts a parity bit that 8N1 does not send
 * (11 bit times a byte instead of 10) and lets firmware read two received
 * bytes per byte time, so bytes from the host would arrive almost twice as
 * fast as a 115200-baud line can carry them. The harness therefore puts
 * bytes from the pty on the simulated wire itself: one byte per frame time
 * (start + data + parity + stop bits from UCSR0C and the baud rate from
 * UBRR0/U2X0), into a receiver that holds what an ATmega's does: two bytes
 * in the receive buffer and one in the shift register. A byte arriving when
 * all three are full is lost (a data overrun), as on a real chip.
 */
struct wire {
	avr_t *avr;
	avr_uart_t *uart;
	avr_irq_t *uart_in;
	uint8_t ring[1 << 16]; /* bytes read from the pty, not yet on the wire */
	uint32_t head, tail;
	int shift_full; /* a received byte waiting in the shift register */
	uint8_t shift;
	unsigned long overruns, dropped;
	unsigned long long rx, tx; /* bytes host to MCU on the wire, MCU to host */
};

static struct wire wire;
static int trace;

/* Opening the pty is seen with inotify (IN_OPEN on the slave). It is
 * checked again before each host byte is taken from uart_pty: the open
 * event is queued before the opener can write, so every byte taken after
 * it is noticed belongs to the new session and reaches the MCU only after
 * the reset, never the bootloader instance that is about to be reset. */
static int ino = -1;
static int reset_pending;

static void check_open(void)
{
	char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
	ssize_t n;
	while ((n = read(ino, buf, sizeof buf)) > 0) {
		for (char *p = buf; p < buf + n;) {
			struct inotify_event *ev = (struct inotify_event *)p;
			if (ev->mask & IN_OPEN) {
				/* what is on the wire now was sent before the open */
				reset_pending = 1;
				wire.tail = wire.head;
				wire.shift_full = 0;
			}
			p += sizeof *ev + ev->len;
		}
	}
}

/* SPM timing: page erase and page write keep SPMEN set this long. */
static avr_cycle_count_t spm_busy_until;
static avr_cycle_count_t spm_cycles;
static int spm_forced; /* SPMEN in data[SPMCSR] was set by spm_read */

static volatile sig_atomic_t stop_signal;
static FILE *ctl; /* the real stdout: protocol lines only */

static void on_signal(int sig) { stop_signal = sig; }

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* The sleep callback is not used for pacing: the main loop paces on cycles. */
static void no_sleep(avr_t *avr, avr_cycle_count_t how_long)
{
	(void)avr;
	(void)how_long;
}

static avr_uart_t *find_uart(avr_t *avr, char name)
{
	for (avr_io_t *io = avr->io_port; io; io = io->next)
		if (io->kind && strcmp(io->kind, "uart") == 0 && ((avr_uart_t *)io)->name == name)
			return (avr_uart_t *)io;
	return NULL;
}

/* frame_cycles is one frame on the wire at the configured baud rate. */
static avr_cycle_count_t frame_cycles(struct wire *w)
{
	avr_t *avr = w->avr;
	avr_uart_t *u = w->uart;
	uint32_t ubrr = avr_regbit_get(avr, u->ubrrl) | (avr_regbit_get(avr, u->ubrrh) << 8);
	uint32_t per_bit = (ubrr + 1) * (avr_regbit_get(avr, u->u2x) ? 8 : 16);
	static const int databits[] = { 5, 6, 7, 8, 8, 8, 8, 9 };
	int db = databits[avr_regbit_get(avr, u->ucsz) | (avr_regbit_get(avr, u->ucsz2) << 2)];
	uint8_t c = avr->data[UCSR0C_ADDR];
	int bits = 1 + db + ((c & UPM0_MASK) ? 1 : 0) + ((c & USBS0) ? 2 : 1);
	return (avr_cycle_count_t)per_bit * bits;
}

static int uart_held(struct wire *w)
{
	return uart_fifo_get_read_size(&w->uart->input);
}

/* Move the shift register into the receive buffer when there is room. */
static void wire_settle(struct wire *w)
{
	if (w->shift_full && uart_held(w) < 2) {
		w->shift_full = 0;
		avr_raise_irq(w->uart_in, w->shift);
	}
}

/* One frame has crossed the wire. */
static avr_cycle_count_t wire_tick(avr_t *avr, avr_cycle_count_t when, void *param)
{
	struct wire *w = param;
	/* Keep the UART's own transmit timing at the true frame time too. */
	avr_cycle_count_t fc = frame_cycles(w);
	w->uart->cycles_per_byte = fc;
	wire_settle(w);
	if (w->head == w->tail || reset_pending)
		return 0; /* restarted by wire_from_pty or reset_mcu */
	uint8_t b = w->ring[w->tail++ & (sizeof w->ring - 1)];
	w->rx++;
	if (trace)
		fprintf(stderr, "wire> %02x at %llu held %d fc %llu\n", b, (unsigned long long)when, uart_held(w), (unsigned long long)fc);
	if (uart_held(w) < 2 && !w->shift_full) {
		avr_raise_irq(w->uart_in, b);
	} else if (!w->shift_full) {
		w->shift = b;
		w->shift_full = 1;
	} else {
		w->overruns++; /* the byte in the shift register is lost */
		w->shift = b;
	}
	(void)avr;
	return when + fc;
}

/* uart_pty hands over a byte read from the pty. */
static void wire_from_pty(struct avr_irq_t *irq, uint32_t value, void *param)
{
	struct wire *w = param;
	(void)irq;
	if (!reset_pending)
		check_open();
	if (w->head - w->tail >= sizeof w->ring) {
		w->dropped++;
		return;
	}
	w->ring[w->head++ & (sizeof w->ring - 1)] = (uint8_t)value;
	if (trace)
		fprintf(stderr, "pty> %02x at %llu\n", value, (unsigned long long)w->avr->cycle);
	if (!reset_pending && avr_cycle_timer_status(w->avr, wire_tick, w) == 0)
		avr_cycle_timer_register(w->avr, frame_cycles(w), wire_tick, w);
}

/* The MCU sent a byte (uart_pty takes it to the pty). */
static void wire_to_pty(struct avr_irq_t *irq, uint32_t value, void *param)
{
	struct wire *w = param;
	(void)irq;
	(void)value;
	w->tx++;
}

/* The end of a page operation is a cycle timer, so that spin skipping
 * (below) stops there. */
static avr_cycle_count_t spm_done(avr_t *avr, avr_cycle_count_t when, void *param)
{
	(void)avr;
	(void)when;
	(void)param;
	return 0;
}

static void spm_write(avr_t *avr, avr_io_addr_t addr, uint8_t v, void *param)
{
	(void)param;
	(void)addr;
	spm_forced = 0;
	if ((v & SPMEN) && (v & (PGERS | PGWRT))) {
		spm_busy_until = avr->cycle + spm_cycles;
		avr_cycle_timer_register(avr, spm_cycles, spm_done, NULL);
	}
}

/* simavr stores what a read hook returns in data[addr]: a forced SPMEN
 * must be taken back once the operation is over. */
static uint8_t spm_read(avr_t *avr, avr_io_addr_t addr, void *param)
{
	(void)param;
	uint8_t v = avr->data[addr];
	if (avr->cycle < spm_busy_until) {
		if (!(v & SPMEN))
			spm_forced = 1;
		v |= SPMEN;
	} else if (spm_forced) {
		spm_forced = 0;
		v &= ~SPMEN;
	}
	return v;
}

/*
 * Spin skipping. Optiboot spends nearly all its time in loops such as
 *     loop: lds r24, UCSR0A ; sbrs r24, RXC0 ; rjmp loop
 * (or in/sbrc on SPMCSR). Between two cycle timers nothing such a loop reads
 * can change (the UART, the watchdog and the flash change state only in
 * timers; interrupts are off), so whole iterations can be skipped up to the
 * next timer: the same cycles pass, the same state results, and the host's
 * CPU is spent only on instructions that do something. Without this, a real
 * time 16 MHz core costs most of a host core and falls behind on a busy
 * machine.
 */
struct spin {
	avr_flashaddr_t pc;      /* loop head seen last */
	avr_cycle_count_t at;    /* cycle it was seen at */
	avr_cycle_count_t due;   /* earliest timer then */
	unsigned long long skipped;
};

static uint16_t op_at(avr_t *avr, avr_flashaddr_t pc)
{
	if (pc + 1 > avr->flashend)
		return 0xffff;
	return avr->flash[pc] | (avr->flash[pc + 1] << 8);
}

/* loop_cycles returns the cycles of one turn if pc heads a read-test-jump
 * loop on an I/O register, else 0. */
static int loop_cycles(avr_t *avr, avr_flashaddr_t pc)
{
	uint16_t op = op_at(avr, pc);
	int rd, len, cycles;
	if ((op & 0xf800) == 0xb000) { /* in rd, A */
		rd = (op >> 4) & 0x1f;
		len = 2;
		cycles = 1;
	} else if ((op & 0xfe0f) == 0x9000) { /* lds rd, k */
		uint16_t k = op_at(avr, pc + 2);
		if (k > avr->ioend)
			return 0;
		rd = (op >> 4) & 0x1f;
		len = 4;
		cycles = 2;
	} else {
		return 0;
	}
	uint16_t t = op_at(avr, pc + len);
	if ((t & 0xfc08) != 0xfc00 || ((t >> 4) & 0x1f) != rd) /* sbrc/sbrs rd, b */
		return 0;
	uint16_t j = op_at(avr, pc + len + 2);
	if ((j & 0xf000) != 0xc000)
		return 0;
	int k = j & 0x0fff;
	if (k & 0x800)
		k -= 0x1000;
	if ((avr_flashaddr_t)((int)(pc + len + 2) + 2 + 2 * k) != pc)
		return 0;
	return cycles + 1 + 2; /* read, test (not skipping), rjmp */
}

static avr_cycle_count_t next_timer(avr_t *avr)
{
	avr_cycle_count_t due = ~(avr_cycle_count_t)0;
	for (avr_cycle_timer_slot_p t = avr->cycle_timers.timer; t; t = t->next)
		if (t->when < due)
			due = t->when;
	return due;
}

/* spin_skip is called with the core at an instruction boundary; it moves
 * the cycle counter over whole loop turns that cannot change anything,
 * never past limit. */
static void spin_skip(avr_t *avr, struct spin *sp, avr_cycle_count_t limit)
{
	if (avr->sreg[S_I])
		return;
	int n = loop_cycles(avr, avr->pc);
	if (!n)
		return;
	avr_cycle_count_t now = avr->cycle, due = next_timer(avr);
	/* One whole turn since the last visit, with no timer due in it: the
	 * test did not leave the loop, and the next turn reads the same. */
	if (sp->pc == avr->pc && now - sp->at == (avr_cycle_count_t)n && sp->due > now) {
		avr_cycle_count_t end = due < limit ? due : limit;
		if (end > now + 2 * (avr_cycle_count_t)n) {
			avr_cycle_count_t turns = (end - now) / n - 1;
			avr->cycle += turns * n;
			sp->skipped += turns * n;
			now = avr->cycle;
		}
	}
	sp->pc = avr->pc;
	sp->at = now;
	sp->due = due;
}

static int write_flash(avr_t *avr, const char *path)
{
	char tmp[4096];
	if (snprintf(tmp, sizeof tmp, "%s.tmp%d", path, (int)getpid()) >= (int)sizeof tmp)
		return -1;
	FILE *f = fopen(tmp, "wb");
	if (!f)
		return -1;
	size_t n = (size_t)avr->flashend + 1;
	if (fwrite(avr->flash, 1, n, f) != n) {
		fclose(f);
		unlink(tmp);
		return -1;
	}
	if (fclose(f) != 0 || rename(tmp, path) != 0) {
		unlink(tmp);
		return -1;
	}
	return 0;
}

static uart_pty_t pty;

/* reset_mcu is an external reset. */
static void reset_mcu(avr_t *avr, uint32_t boot, const char *why)
{
	avr_reset(avr);
	avr->pc = boot;
	avr->data[MCUSR_ADDR] = 1 << EXTRF;
	avr->state = cpu_Running;
	spm_busy_until = 0;
	spm_forced = 0;
	wire.shift_full = 0;
	reset_pending = 0;
	/* avr_reset dropped the cycle timers: keep bytes on the wire moving. */
	if (wire.head != wire.tail)
		avr_cycle_timer_register(avr, frame_cycles(&wire), wire_tick, &wire);
	fprintf(ctl, "reset: %s\n", why);
}

/* eat_input stands for the application while the core is held: bytes the
 * host sends then are read and ignored, not kept for the next bootloader
 * session. */
static void eat_input(void)
{
	check_open();
	if (reset_pending)
		return; /* what is queued belongs to the new session */
	wire.shift_full = 0;
	wire.tail = wire.head;
	while (!uart_pty_fifo_isempty(&pty.pty.out))
		uart_pty_fifo_read(&pty.pty.out);
}

static int load_hex(avr_t *avr, const char *path)
{
	ihex_chunk_p chunks = NULL;
	int n = read_ihex_chunks(path, &chunks);
	if (n <= 0) {
		fprintf(stderr, "optiboot_sim: %s: no data\n", path);
		return -1;
	}
	for (int i = 0; i < n; i++) {
		if ((uint64_t)chunks[i].baseaddr + chunks[i].size > (uint64_t)avr->flashend + 1) {
			fprintf(stderr, "optiboot_sim: %s: 0x%x+%u runs past the end of flash\n",
			        path, chunks[i].baseaddr, chunks[i].size);
			free_ihex_chunks(chunks);
			return -1;
		}
		memcpy(avr->flash + chunks[i].baseaddr, chunks[i].data, chunks[i].size);
	}
	free_ihex_chunks(chunks);
	return 0;
}

int main(int argc, char **argv)
{
	const char *mcu = "atmega328p";
	uint32_t freq = 16000000;
	uint32_t boot = 0x7e00;
	const char *flash_out = NULL;
	double speed = 1.0;
	double spm_usec = 4000; /* ATmega328P datasheet: 3.7 to 4.5 ms */
	int opt;

	while ((opt = getopt(argc, argv, "m:f:b:o:s:p:")) != -1) {
		switch (opt) {
		case 'm': mcu = optarg; break;
		case 'f': freq = (uint32_t)strtoul(optarg, NULL, 0); break;
		case 'b': boot = (uint32_t)strtoul(optarg, NULL, 0); break;
		case 'o': flash_out = optarg; break;
		case 's': speed = strtod(optarg, NULL); break;
		case 'p': spm_usec = strtod(optarg, NULL); break;
		default: goto usage;
		}
	}
	if (optind != argc - 1 || freq == 0 || speed < 0 || spm_usec < 0) {
	usage:
		fprintf(stderr, "usage: optiboot_sim [-m MCU] [-f HZ] [-b BOOTADDR] [-o FLASHFILE] [-s SPEED] [-p SPM_USEC] BOOT.hex\n");
		return 2;
	}

	/* Keep the real stdout for protocol lines; simavr prints to stdout. */
	int ctlfd = dup(1);
	if (ctlfd < 0 || dup2(2, 1) < 0) {
		perror("optiboot_sim: dup");
		return 1;
	}
	ctl = fdopen(ctlfd, "w");
	setvbuf(ctl, NULL, _IOLBF, 0);

	trace = getenv("OPTIBOOT_SIM_TRACE") != NULL;
	avr_t *avr = avr_make_mcu_by_name(mcu);
	if (!avr) {
		fprintf(stderr, "optiboot_sim: unknown mcu %s\n", mcu);
		return 1;
	}
	avr_init(avr);
	avr->frequency = freq;
	avr->log = LOG_ERROR;
	avr->sleep = no_sleep;
	if (boot > avr->flashend) {
		fprintf(stderr, "optiboot_sim: boot address 0x%x is outside flash\n", boot);
		return 1;
	}
	if (load_hex(avr, argv[optind]) != 0)
		return 1;
	avr->reset_pc = boot;
	avr->codeend = avr->flashend;

	uart_pty_init(avr, &pty);
	if (!pty.pty.s) {
		fprintf(stderr, "optiboot_sim: no pseudo-terminal\n");
		return 1;
	}
	uart_pty_connect(&pty, '0');
	/* uart_pty_connect leaves a /tmp/simavr-uart0 link; it is ours only
	 * if it points at our pty, and nobody needs it. */
	{
		char target[128];
		ssize_t n = readlink("/tmp/simavr-uart0", target, sizeof target - 1);
		if (n > 0) {
			target[n] = 0;
			if (strcmp(target, pty.pty.slavename) == 0)
				unlink("/tmp/simavr-uart0");
		}
	}
	/* Status-register polling must not usleep: pacing is done here. */
	uint32_t flags = 0;
	avr_ioctl(avr, AVR_IOCTL_UART_GET_FLAGS('0'), &flags);
	flags &= ~(AVR_UART_FLAG_POLL_SLEEP | AVR_UART_FLAG_STDIO);
	avr_ioctl(avr, AVR_IOCTL_UART_SET_FLAGS('0'), &flags);

	ino = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
	if (ino < 0 || inotify_add_watch(ino, pty.pty.slavename, IN_OPEN) < 0) {
		perror("optiboot_sim: inotify");
		return 1;
	}

	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_signal;
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);

	/* Put the wire model between uart_pty and the UART's receiver. */
	wire.avr = avr;
	wire.uart = find_uart(avr, '0');
	wire.uart_in = avr_io_getirq(avr, AVR_IOCTL_UART_GETIRQ('0'), UART_IRQ_INPUT);
	if (!wire.uart || !wire.uart_in) {
		fprintf(stderr, "optiboot_sim: %s has no UART0\n", mcu);
		return 1;
	}
	avr_unconnect_irq(pty.irq + IRQ_UART_PTY_BYTE_OUT, wire.uart_in);
	avr_irq_register_notify(pty.irq + IRQ_UART_PTY_BYTE_OUT, wire_from_pty, &wire);
	avr_irq_register_notify(avr_io_getirq(avr, AVR_IOCTL_UART_GETIRQ('0'), UART_IRQ_OUTPUT),
	                        wire_to_pty, &wire);

	/* Self-programming takes time on a real chip: SPMEN stays set. */
	spm_cycles = (avr_cycle_count_t)((double)freq * spm_usec / 1e6);
	if (spm_cycles) {
		avr_register_io_write(avr, SPMCSR_ADDR, spm_write, NULL);
		avr_register_io_read(avr, SPMCSR_ADDR, spm_read, NULL);
	}

	reset_mcu(avr, boot, "power-on");
	fprintf(ctl, "port: %s\n", pty.pty.slavename);

	/* The core runs ahead of the wall clock by at most one slice, and host
	 * bytes that arrive meanwhile wait for the next slice: 200 us keeps that
	 * latency below a USB serial adapter's 1 ms frame. */
	const uint64_t slice = freq / 5000;
	uint64_t wall0 = now_ns();
	avr_cycle_count_t cyc0 = avr->cycle;
	uint64_t start_ns = wall0;
	avr_cycle_count_t start_cycle = avr->cycle;
	unsigned long behind = 0; /* times the core fell >20 ms behind */
	int held = 0;  /* core left the bootloader: not executed until reset */
	struct spin spin = { 0 };
	int skip = getenv("OPTIBOOT_SIM_NOSKIP") == NULL;
	int done = 0;
	char line[4200];
	size_t line_len = 0;

	while (!done && !stop_signal) {
		if (reset_pending) {
			reset_mcu(avr, boot, "open");
			held = 0;
			wall0 = now_ns();
			cyc0 = avr->cycle;
		}
		if (!held) {
			avr_cycle_count_t target = avr->cycle + slice;
			while (avr->cycle < target) {
				int st = avr_run(avr);
				if (st == cpu_Done || st == cpu_Crashed) {
					fprintf(ctl, "crashed: 0x%x\n", avr->pc);
					held = 1;
					break;
				}
				if (wire.shift_full)
					wire_settle(&wire);
				if (avr->pc < boot) {
					fprintf(ctl, "app: 0x%x\n", avr->pc);
					held = 1;
					break;
				}
				if (reset_pending)
					break;
				if (skip)
					spin_skip(avr, &spin, target);
			}
		}

		if (held)
			eat_input();
		if (reset_pending)
			continue;

		/* Pace: wait until wall-clock time catches up with the core. */
		struct timespec ts = { 0, 50 * 1000000L };
		if (!held && speed > 0) {
			uint64_t sim_ns = (uint64_t)((double)(avr->cycle - cyc0) * 1e9 / freq / speed);
			uint64_t wall_ns = now_ns() - wall0;
			if (sim_ns > wall_ns) {
				uint64_t d = sim_ns - wall_ns;
				ts.tv_sec = (time_t)(d / 1000000000ull);
				ts.tv_nsec = (long)(d % 1000000000ull);
			} else {
				ts.tv_sec = 0;
				ts.tv_nsec = 0;
				/* Too far behind (a busy host): do not race to catch up,
				 * which would squeeze bytes closer than the baud rate. */
				if (wall_ns - sim_ns > 20000000ull) {
					behind++;
					wall0 = now_ns();
					cyc0 = avr->cycle;
				}
			}
		} else if (!held) {
			ts.tv_sec = 0;
			ts.tv_nsec = 0;
		}

		struct pollfd fds[2] = {
			{ .fd = ino, .events = POLLIN },
			{ .fd = 0, .events = POLLIN },
		};
		int r = ppoll(fds, 2, &ts, NULL);
		if (r < 0 && errno != EINTR) {
			perror("optiboot_sim: ppoll");
			break;
		}
		if (r <= 0)
			continue;

		if (fds[0].revents & POLLIN)
			check_open(); /* the reset follows at the top of the loop */

		if (fds[1].revents & (POLLIN | POLLHUP | POLLERR)) {
			ssize_t n = read(0, line + line_len, sizeof line - 1 - line_len);
			if (n <= 0) {
				done = 1;
				break;
			}
			line_len += (size_t)n;
			char *nl;
			while ((nl = memchr(line, '\n', line_len)) != NULL) {
				*nl = 0;
				if (strncmp(line, "dump ", 5) == 0) {
					if (write_flash(avr, line + 5) == 0)
						fprintf(ctl, "dumped: %s\n", line + 5);
					else
						fprintf(ctl, "error: dump %s: %s\n", line + 5, strerror(errno));
				} else if (strcmp(line, "stats") == 0) {
					fprintf(ctl, "stats: rx=%llu tx=%llu overruns=%lu dropped=%lu behind=%lu cycles=%llu\n",
					        wire.rx, wire.tx, wire.overruns, wire.dropped, behind,
					        (unsigned long long)(avr->cycle - start_cycle));
				} else if (strcmp(line, "reset") == 0) {
					reset_mcu(avr, boot, "command");
					held = 0;
					wall0 = now_ns();
					cyc0 = avr->cycle;
				} else if (strcmp(line, "quit") == 0) {
					done = 1;
				} else {
					fprintf(ctl, "error: unknown command %s\n", line);
				}
				size_t used = (size_t)(nl - line) + 1;
				memmove(line, nl + 1, line_len - used);
				line_len -= used;
			}
			if (line_len == sizeof line - 1)
				line_len = 0; /* an over-long line: drop it */
		}
	}

	fprintf(stderr, "optiboot_sim: %llu cycles in %.3f s wall, fell behind real time %lu times, "
	        "%lu receive overruns, %lu bytes dropped, %llu idle cycles skipped\n",
	        (unsigned long long)(avr->cycle - start_cycle), (double)(now_ns() - start_ns) / 1e9, behind,
	        wire.overruns, wire.dropped, spin.skipped);
	int rc = 0;
	if (flash_out) {
		if (write_flash(avr, flash_out) == 0) {
			fprintf(ctl, "dumped: %s\n", flash_out);
		} else {
			fprintf(stderr, "optiboot_sim: write %s: %s\n", flash_out, strerror(errno));
			rc = 1;
		}
	}
	fflush(ctl);
	/* uart_pty's thread blocks in select(); exiting ends it. */
	_exit(rc);
}
