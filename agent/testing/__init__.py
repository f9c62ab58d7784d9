"""The public test harness, shared by the tests, the benches and the demo."""
