// Start-up code for the STM32F103C8: the vector table and the reset handler,
// which copies .data from flash to RAM, zeroes .bss and calls main.
#include <stdint.h>

extern uint32_t _sidata, _sdata, _edata, _sbss, _ebss, _estack;

int main(void);

void Reset_Handler(void);

static void Default_Handler(void) {
	for (;;) {
	}
}

// Cortex-M3 system exceptions; the STM32F103 has 68 peripheral interrupts
// after them, all sent to Default_Handler.
__attribute__((section(".isr_vector"), used))
void (*const vectors[16 + 68])(void) = {
	[0] = (void (*)(void))&_estack,
	[1] = Reset_Handler,
	[2 ... 16 + 67] = Default_Handler,
};

void Reset_Handler(void) {
	uint32_t *src = &_sidata;
	for (uint32_t *dst = &_sdata; dst < &_edata;) {
		*dst++ = *src++;
	}
	for (uint32_t *dst = &_sbss; dst < &_ebss;) {
		*dst++ = 0;
	}
	main();
	for (;;) {
	}
}
