/* The fixed master key the recording fuzz seeds are encrypted under. Test data, not a secret. */
#ifndef SP_TESTS_FUZZ_RECORDING_KEYS_H
#define SP_TESTS_FUZZ_RECORDING_KEYS_H

#define FUZZ_MASTER_KEYS "mk-fuzz-seeds AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n"

#endif
