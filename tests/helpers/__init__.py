"""Programs and calculators used by the tests to provoke failures."""
