"""multiprocess and concurrent.futures faces: Pool, Executor, managers."""
