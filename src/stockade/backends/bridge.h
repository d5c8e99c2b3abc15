/* bridge: relays the sandbox's loopback proxy port to stockade's proxy socket (bridge.c). */
#ifndef STOCKADE_BRIDGE_H
#define STOCKADE_BRIDGE_H

int bridge_main(int argc, char **argv);
int connect_main(int argc, char **argv);

#endif
