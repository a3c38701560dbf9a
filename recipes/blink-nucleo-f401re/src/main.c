// Blink for the NUCLEO-F401RE: the green user LED LD2 is on PA5. Registers
// from RM0368 (STM32F401 reference manual).
#include <stdint.h>

#define REG(addr) (*(volatile uint32_t *)(addr))

#define RCC_AHB1ENR REG(0x40023830u)
#define GPIOA_MODER REG(0x40020000u)
#define GPIOA_ODR   REG(0x40020014u)

#define LED_PIN 5u

// In .data so the reset handler's copy is what gives the delay its value.
static volatile uint32_t half_period = 400000u;
static volatile uint32_t toggles;

static void wait(uint32_t n) {
	for (volatile uint32_t i = 0; i < n; i++) {
	}
}

int main(void) {
	RCC_AHB1ENR |= 1u << 0; // GPIOAEN
	(void)RCC_AHB1ENR;      // let the clock settle before touching the port
	GPIOA_MODER = (GPIOA_MODER & ~(3u << (2 * LED_PIN))) | (1u << (2 * LED_PIN));
	for (;;) {
		GPIOA_ODR ^= 1u << LED_PIN;
		toggles++;
		wait(half_period);
	}
}
