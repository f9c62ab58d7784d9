"""The box itself: the daemon that wires hardware, video and delivery together, its local
control socket, the walk test and the technician's selftest.
"""
