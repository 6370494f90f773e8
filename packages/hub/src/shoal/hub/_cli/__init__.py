"""The command line, Cluster (starts and stops clusters) and the %px magics."""
