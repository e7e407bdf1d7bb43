/* One executable per backend; the same tests for every backend. */
#include "conf.h"

#define PX_TEST(name)                                                          \
  cmocka_unit_test_setup_teardown(name, test_setup, test_teardown),

int main(void) {
  const struct CMUnitTest tests[] = {
#include "list.h"
  };
  return cmocka_run_group_tests_name("conformance_" PX_TEST_BACKEND, tests,
                                     NULL, NULL);
}
