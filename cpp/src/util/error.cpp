// Out-of-line anchors for the error hierarchy, so each class has one vtable
// and its type_info is shared by the core, the tests and the bindings.
#include "enstack/util/error.h"
