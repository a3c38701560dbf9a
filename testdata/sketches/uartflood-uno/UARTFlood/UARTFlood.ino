// UARTFlood: numbered lines on the serial port at 115200 baud, as fast as
// the line takes them. kiln's benchmark of simulated time per wall second
// under UART load (make bench).
unsigned long n = 0;

void setup() {
  Serial.begin(115200);
}

void loop() {
  Serial.print("line ");
  Serial.println(n++);
}
