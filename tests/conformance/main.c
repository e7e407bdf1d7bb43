/* One executable per backend; the same tests for every backend. */
#include "conf.h"

#define PX_TEST(name)                                                          \
  cmocka_unit_test_setup_teardown(name, test_setup, test_teardown),

/* An argument runs only the tests whose names match it (CMocka's filter:
 * '*' and '?' are wildcards), e.g. conformance_uring 'smallest_queue_*'. */
int main(int argc, char **argv) {
  if (argc > 1)
    cmocka_set_test_filter(argv[1]);
  const struct CMUnitTest tests[] = {
#include "list.h"
  };
  return cmocka_run_group_tests_name("conformance_" PX_TEST_BACKEND, tests,
                                     NULL, NULL);
}
