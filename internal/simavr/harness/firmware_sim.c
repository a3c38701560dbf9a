/*
 * firmware_sim runs an AVR flash image (an application, with or without its
 * bootloader) inside simavr for a given number of core cycles and reports
 * what the firmware did, each with the core cycle it happened at.
 *
 *   firmware_sim -m MCU -f HZ [-b BOOTADDR] [-c CYCLES] [-s SPEED]
 *                [-P PB5,PD2,...] [-r CYCLE] [-a CH=MV]... [-i PD2=1]...
 *                FLASH.bin
 *
 * FLASH.bin is the flash content from address 0 (what a programmer wrote);
 * the harness copies it into the simulated flash as it is.
 *
 *   -b BOOTADDR  the BOOTRST fuse: the core starts (and every reset starts
 *                it) at BOOTADDR, with MCUSR.EXTRF set as after the external
 *                reset an Arduino's DTR line gives; without -b the core
 *                starts at 0 after a power-on reset (MCUSR.PORF)
 *   -c CYCLES    stop after this many core cycles (default: never)
 *   -s SPEED     pace to wall-clock time (1 = real time); 0, the default,
 *                runs as fast as the host can
 *   -P PINS      report level changes of these port pins
 *   -r CYCLE     bytes on stdin go on the UART0 receive line from CYCLE on
 *   -a CH=MV     drive ADC channel CH with MV millivolts (AVcc is 5000 mV)
 *   -i PIN=0|1   drive an input pin low or high
 *
 * Bytes on stdin go to UART0's receive line at the true frame rate of the
 * baud rate the firmware programs (start + data + parity + stop bits),
 * once the firmware has enabled the receiver, into a receiver that holds
 * what an ATmega's does (two bytes in the buffer, one in the shift
 * register); a byte arriving when all three are full is an overrun.
 *
 * stdout carries one line per event:
 *   u CYCLE BYTE BITCYCLES BITS  UART0 sent BYTE (decimal); a bit lasts
 *                                BITCYCLES, the frame BITS bits
 *   p CYCLE PIN LEVEL            a reported pin changed (first: its level
 *                                at the start)
 *   app CYCLE 0xPC               the core left the bootloader (with -b)
 *   reset CYCLE                  the MCU was reset (watchdog)
 *   halt CYCLE 0xPC REASON       the core stopped (sleep with interrupts
 *                                off, or a crash)
 *   end CYCLE WALL_NS OVERRUNS   the run is over: cycles simulated,
 *                                wall-clock nanoseconds spent, bytes lost
 * simavr's own messages go to stderr. SIGTERM/SIGINT end the run (with the
 * "end" line).
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
#include <time.h>
#include <unistd.h>

#include "sim_avr.h"
#include "avr_uart.h"
#include "avr_ioport.h"
#include "avr_adc.h"

DEFINE_FIFO(uint16_t, uart_fifo);

#define MAXPINS 64

static FILE *out;
static volatile sig_atomic_t stop_signal;
static void on_signal(int sig) { stop_signal = sig; }

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void no_sleep(avr_t *avr, avr_cycle_count_t how_long)
{
	(void)avr;
	(void)how_long;
}

/* The UART's registers: UCSRnC is the register after UCSRnB. */
struct wire {
	avr_t *avr;
	avr_uart_t *uart;
	avr_irq_t *in;
	uint8_t ring[1 << 16];
	uint32_t head, tail;
	int shift_full;
	uint8_t shift;
	avr_cycle_count_t start; /* -r: nothing goes on the line before */
	unsigned long overruns;
};

static struct wire wire;

static int frame_bits(struct wire *w)
{
	avr_t *avr = w->avr;
	avr_uart_t *u = w->uart;
	static const int databits[] = { 5, 6, 7, 8, 8, 8, 8, 9 };
	int db = databits[avr_regbit_get(avr, u->ucsz) | (avr_regbit_get(avr, u->ucsz2) << 2)];
	/* UCSRnC: UPMn1:0 at bits 5:4, USBSn at bit 3. */
	uint8_t c = avr->data[u->ucsz.reg];
	return 1 + db + ((c & 0x30) ? 1 : 0) + ((c & 0x08) ? 2 : 1);
}

static avr_cycle_count_t bit_cycles(struct wire *w)
{
	avr_t *avr = w->avr;
	avr_uart_t *u = w->uart;
	uint32_t ubrr = avr_regbit_get(avr, u->ubrrl) | (avr_regbit_get(avr, u->ubrrh) << 8);
	return (avr_cycle_count_t)(ubrr + 1) * (avr_regbit_get(avr, u->u2x) ? 8 : 16);
}

static avr_cycle_count_t frame_cycles(struct wire *w)
{
	return bit_cycles(w) * frame_bits(w);
}

static int held(struct wire *w) { return uart_fifo_get_read_size(&w->uart->input); }

static void settle(struct wire *w)
{
	if (w->shift_full && held(w) < 2) {
		w->shift_full = 0;
		avr_raise_irq(w->in, w->shift);
	}
}

static int rx_enabled(struct wire *w) { return avr_regbit_get(w->avr, w->uart->rxen); }

/* One frame time has passed on the receive line. */
static avr_cycle_count_t wire_tick(avr_t *avr, avr_cycle_count_t when, void *param)
{
	struct wire *w = param;
	avr_cycle_count_t fc = frame_cycles(w);
	w->uart->cycles_per_byte = fc;
	settle(w);
	if (w->head == w->tail)
		return 0;
	if (!rx_enabled(w) || avr->cycle < w->start)
		return when + fc; /* the line waits for the receiver */
	uint8_t b = w->ring[w->tail++ & (sizeof w->ring - 1)];
	if (held(w) < 2 && !w->shift_full) {
		avr_raise_irq(w->in, b);
	} else if (!w->shift_full) {
		w->shift = b;
		w->shift_full = 1;
	} else {
		w->overruns++;
		w->shift = b;
	}
	return when + fc;
}

static void wire_kick(struct wire *w)
{
	if (w->head != w->tail && avr_cycle_timer_status(w->avr, wire_tick, w) == 0)
		avr_cycle_timer_register(w->avr, frame_cycles(w), wire_tick, w);
}

/* The MCU sent a byte. simavr 1.6 times a frame as 11 bits whatever the
 * format; the frame time is corrected here, before the next byte. */
static void uart_out(struct avr_irq_t *irq, uint32_t value, void *param)
{
	struct wire *w = param;
	(void)irq;
	w->uart->cycles_per_byte = frame_cycles(w);
	fprintf(out, "u %llu %u %llu %d\n", (unsigned long long)w->avr->cycle, value & 0xff,
	        (unsigned long long)bit_cycles(w), frame_bits(w));
}

struct pin {
	char port;
	int bit;
	int level;
	avr_t *avr;
};

static struct pin pins[MAXPINS];
static int npins;

static void pin_changed(struct avr_irq_t *irq, uint32_t value, void *param)
{
	struct pin *p = param;
	(void)irq;
	int v = value ? 1 : 0;
	if (v == p->level)
		return;
	p->level = v;
	fprintf(out, "p %llu P%c%d %d\n", (unsigned long long)p->avr->cycle, p->port, p->bit, v);
}

static int parse_pin(const char *s, char *port, int *bit)
{
	if ((s[0] != 'P' && s[0] != 'p') || s[1] < 'A' || s[1] > 'L' || s[2] < '0' || s[2] > '7')
		return -1;
	*port = s[1];
	*bit = s[2] - '0';
	return 0;
}

static avr_irq_t *pin_irq(avr_t *avr, char port, int bit)
{
	/* avr_io_getirq returns NULL for a port the part does not have. */
	return avr_io_getirq(avr, AVR_IOCTL_IOPORT_GETIRQ(port), bit);
}

/*
 * MCUSR's reset flags are cumulative on a real ATmega: only a power-on
 * reset or the firmware clears them. simavr's reset zeroes the register
 * and its watchdog then sets WDRF alone, so a bootloader started by an
 * external reset (EXTRF) that times out through the watchdog would see
 * WDRF without EXTRF. Optiboot 8.3 then cannot clear WDRF, so it cannot
 * turn the watchdog off, and the application is reset every 16 ms. The
 * core's reset hook is wrapped to keep the flags the register held.
 */
#define MCUSR_ADDR 0x54
static void (*core_reset)(avr_t *avr);
static uint8_t mcusr_shadow;

static void keep_reset_flags(avr_t *avr)
{
	if (core_reset)
		core_reset(avr);
	avr->data[MCUSR_ADDR] |= mcusr_shadow & 0x0f;
}

static int load_bin(avr_t *avr, const char *path)
{
	FILE *f = fopen(path, "rb");
	if (!f) {
		fprintf(stderr, "firmware_sim: %s: %s\n", path, strerror(errno));
		return -1;
	}
	size_t max = (size_t)avr->flashend + 1;
	size_t n = fread(avr->flash, 1, max, f);
	int extra = fgetc(f);
	fclose(f);
	if (extra != EOF) {
		fprintf(stderr, "firmware_sim: %s is larger than the %zu bytes of flash\n", path, max);
		return -1;
	}
	if (n == 0) {
		fprintf(stderr, "firmware_sim: %s is empty\n", path);
		return -1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	const char *mcu = NULL;
	uint32_t freq = 0;
	long long boot = -1;
	unsigned long long limit = 0;
	double speed = 0;
	const char *pinlist = NULL;
	unsigned long long rx_start = 0;
	int adc_ch[16], adc_mv[16], nadc = 0;
	char in_port[16];
	int in_bit[16], in_level[16], nin = 0;
	int opt;

	while ((opt = getopt(argc, argv, "m:f:b:c:s:P:r:a:i:")) != -1) {
		switch (opt) {
		case 'm': mcu = optarg; break;
		case 'f': freq = (uint32_t)strtoul(optarg, NULL, 0); break;
		case 'b': boot = strtoll(optarg, NULL, 0); break;
		case 'c': limit = strtoull(optarg, NULL, 0); break;
		case 's': speed = strtod(optarg, NULL); break;
		case 'P': pinlist = optarg; break;
		case 'r': rx_start = strtoull(optarg, NULL, 0); break;
		case 'a':
			if (nadc == 16 || sscanf(optarg, "%d=%d", &adc_ch[nadc], &adc_mv[nadc]) != 2 ||
			    adc_ch[nadc] < 0 || adc_ch[nadc] > 15)
				goto usage;
			nadc++;
			break;
		case 'i': {
			char *eq = strchr(optarg, '=');
			if (nin == 16 || !eq || parse_pin(optarg, &in_port[nin], &in_bit[nin]) != 0)
				goto usage;
			in_level[nin++] = atoi(eq + 1) ? 1 : 0;
			break;
		}
		default: goto usage;
		}
	}
	if (optind != argc - 1 || !mcu || freq == 0 || speed < 0) {
	usage:
		fprintf(stderr, "usage: firmware_sim -m MCU -f HZ [-b BOOTADDR] [-c CYCLES] [-s SPEED] "
		                "[-P PINS] [-r CYCLE] [-a CH=MV]... [-i PIN=0|1]... FLASH.bin\n");
		return 2;
	}

	/* Keep the real stdout for events; simavr prints to stdout. */
	int fd = dup(1);
	if (fd < 0 || dup2(2, 1) < 0) {
		perror("firmware_sim: dup");
		return 1;
	}
	out = fdopen(fd, "w");
	static char outbuf[1 << 16];
	setvbuf(out, outbuf, _IOFBF, sizeof outbuf);

	avr_t *avr = avr_make_mcu_by_name(mcu);
	if (!avr) {
		fprintf(stderr, "firmware_sim: simavr has no core %s\n", mcu);
		return 1;
	}
	avr_init(avr);
	avr->frequency = freq;
	avr->log = LOG_ERROR;
	avr->sleep = no_sleep;
	avr->vcc = avr->avcc = avr->aref = 5000;
	if (load_bin(avr, argv[optind]) != 0)
		return 1;
	avr->codeend = avr->flashend;
	if (boot >= 0) {
		if (boot > avr->flashend) {
			fprintf(stderr, "firmware_sim: boot address 0x%llx is outside flash\n", boot);
			return 1;
		}
		avr->reset_pc = (uint32_t)boot;
	}

	wire.avr = avr;
	wire.uart = NULL;
	/* The board's UART is UART0, or the chip's first one where it has no
	 * UART0 (the ATmega32u4's is USART1: its USB is the other serial port). */
	for (avr_io_t *io = avr->io_port; io; io = io->next)
		if (io->kind && strcmp(io->kind, "uart") == 0 &&
		    (!wire.uart || ((avr_uart_t *)io)->name == '0' ||
		     (wire.uart->name != '0' && ((avr_uart_t *)io)->name < wire.uart->name)))
			wire.uart = (avr_uart_t *)io;
	char un = wire.uart ? wire.uart->name : '0';
	wire.in = avr_io_getirq(avr, AVR_IOCTL_UART_GETIRQ(un), UART_IRQ_INPUT);
	if (!wire.uart || !wire.in) {
		fprintf(stderr, "firmware_sim: %s has no UART\n", mcu);
		return 1;
	}
	wire.start = rx_start;
	uint32_t flags = 0;
	avr_ioctl(avr, AVR_IOCTL_UART_GET_FLAGS(un), &flags);
	flags &= ~(AVR_UART_FLAG_POLL_SLEEP | AVR_UART_FLAG_STDIO);
	avr_ioctl(avr, AVR_IOCTL_UART_SET_FLAGS(un), &flags);
	avr_irq_register_notify(avr_io_getirq(avr, AVR_IOCTL_UART_GETIRQ(un), UART_IRQ_OUTPUT), uart_out, &wire);

	if (pinlist) {
		char *list = strdup(pinlist), *save = NULL;
		for (char *tok = strtok_r(list, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
			struct pin *p = &pins[npins];
			if (npins == MAXPINS || parse_pin(tok, &p->port, &p->bit) != 0) {
				fprintf(stderr, "firmware_sim: bad pin %s\n", tok);
				return 2;
			}
			avr_irq_t *irq = pin_irq(avr, p->port, p->bit);
			if (!irq) {
				fprintf(stderr, "firmware_sim: %s has no pin P%c%d\n", mcu, p->port, p->bit);
				return 1;
			}
			p->avr = avr;
			p->level = -1;
			avr_irq_register_notify(irq, pin_changed, p);
			npins++;
		}
		free(list);
	}

	avr_reset(avr);
	if (boot >= 0)
		avr->pc = (uint32_t)boot;
	/* MCUSR sits at data address 0x54 on every part simavr runs for kiln
	 * (ATmega328P, ATmega2560, ATmega32U4): EXTRF is bit 1, PORF bit 0. */
	avr->data[MCUSR_ADDR] = boot >= 0 ? 1 << 1 : 1 << 0;
	mcusr_shadow = avr->data[MCUSR_ADDR];
	core_reset = avr->reset;
	avr->reset = keep_reset_flags;
	avr->state = cpu_Running;

	for (int i = 0; i < npins; i++) {
		avr_irq_t *irq = pin_irq(avr, pins[i].port, pins[i].bit);
		pins[i].level = irq->value ? 1 : 0;
		fprintf(out, "p 0 P%c%d %d\n", pins[i].port, pins[i].bit, pins[i].level);
	}
	for (int i = 0; i < nadc; i++)
		avr_raise_irq(avr_io_getirq(avr, AVR_IOCTL_ADC_GETIRQ, adc_ch[i]), adc_mv[i]);
	for (int i = 0; i < nin; i++) {
		avr_irq_t *irq = pin_irq(avr, in_port[i], in_bit[i]);
		if (!irq) {
			fprintf(stderr, "firmware_sim: %s has no pin P%c%d\n", mcu, in_port[i], in_bit[i]);
			return 1;
		}
		avr_raise_irq(irq, in_level[i]);
	}

	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_signal;
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
	int stdin_open = fcntl(0, F_SETFL, fcntl(0, F_GETFL) | O_NONBLOCK) == 0;

	/* Slices of 1 ms of simulated time: between them stdin is read, the
	 * clock paced and the output flushed. */
	const avr_cycle_count_t slice = freq / 1000;
	uint64_t wall0 = now_ns(), start_ns = wall0;
	avr_cycle_count_t cyc0 = avr->cycle, start = avr->cycle;
	int in_boot = boot >= 0;
	int halted = 0;
	while (!stop_signal && !halted && (limit == 0 || avr->cycle - start < limit)) {
		avr_cycle_count_t target = avr->cycle + slice;
		if (limit && target > start + limit)
			target = start + limit;
		avr_cycle_count_t before_reset = avr->cycle;
		while (avr->cycle < target) {
			int st = avr_run(avr);
			if (st == cpu_Done || st == cpu_Crashed) {
				fprintf(out, "halt %llu 0x%x %s\n", (unsigned long long)(avr->cycle - start), avr->pc,
				        st == cpu_Done ? "sleeping with interrupts off" : "crashed");
				halted = 1;
				break;
			}
			mcusr_shadow = avr->data[MCUSR_ADDR];
			if (wire.shift_full)
				settle(&wire);
			if (avr->cycle < before_reset) {
				/* a watchdog reset starts the clock again in simavr */
				break;
			}
			before_reset = avr->cycle;
			if (in_boot && avr->pc < (uint32_t)boot) {
				fprintf(out, "app %llu 0x%x\n", (unsigned long long)(avr->cycle - start), avr->pc);
				in_boot = 0;
			} else if (!in_boot && boot >= 0 && avr->pc == (uint32_t)boot) {
				fprintf(out, "reset %llu\n", (unsigned long long)(avr->cycle - start));
				in_boot = 1;
			}
		}
		if (stdin_open) {
			for (;;) {
				uint8_t buf[4096];
				uint32_t room = sizeof wire.ring - (wire.head - wire.tail);
				if (room == 0)
					break;
				ssize_t n = read(0, buf, room < sizeof buf ? room : sizeof buf);
				if (n <= 0) {
					if (n == 0 || (errno != EAGAIN && errno != EINTR))
						stdin_open = 0;
					break;
				}
				for (ssize_t i = 0; i < n; i++)
					wire.ring[wire.head++ & (sizeof wire.ring - 1)] = buf[i];
			}
		}
		wire_kick(&wire);
		/* Nobody reads the events any more (kiln is gone): stop. */
		if (ferror(out))
			break;
		if (speed > 0) {
			fflush(out);
			uint64_t sim_ns = (uint64_t)((double)(avr->cycle - cyc0) * 1e9 / freq / speed);
			uint64_t wall_ns = now_ns() - wall0;
			if (sim_ns > wall_ns) {
				struct timespec ts = { (time_t)((sim_ns - wall_ns) / 1000000000ull),
				                       (long)((sim_ns - wall_ns) % 1000000000ull) };
				struct pollfd pfd = { .fd = 0, .events = POLLIN };
				ppoll(&pfd, stdin_open ? 1 : 0, &ts, NULL);
			} else if (wall_ns - sim_ns > 100000000ull) {
				/* a busy host: do not race to catch up */
				wall0 = now_ns();
				cyc0 = avr->cycle;
			}
		}
	}
	fprintf(out, "end %llu %llu %lu\n", (unsigned long long)(avr->cycle - start),
	        (unsigned long long)(now_ns() - start_ns), wire.overruns);
	fflush(out);
	_exit(0);
}
