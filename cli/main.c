#include <stdio.h>

int main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "sallyport: no subcommands yet\n");
    return 2;
}
