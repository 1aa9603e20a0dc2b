"""`accelopt profile`: where the time goes, per node and per op type, and which recipe step addresses it."""
