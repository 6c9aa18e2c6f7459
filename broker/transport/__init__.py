"""Transport helpers of the zmq driver, the only broker code besides the drivers that does
I/O: the ROUTER socket (``router``), executor children's Unix-socket links (``links``) and
their routes, the epoll ``poller``, the local worker ``pool`` (processes), and the control
endpoint of drivers without a ROUTER of their own.
"""
