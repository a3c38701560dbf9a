// Blink for the Arduino Uno: the classic sketch, written as C++ on the
// Arduino core. The LED on pin 13 (PB5) toggles once a second.
#include <Arduino.h>

void setup() {
	pinMode(LED_BUILTIN, OUTPUT);
}

void loop() {
	digitalWrite(LED_BUILTIN, HIGH);
	delay(1000);
	digitalWrite(LED_BUILTIN, LOW);
	delay(1000);
}
