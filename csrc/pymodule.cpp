// Empty Python module so that setup.py's `spmctl._membrane_ext` is importable; importing it loads
// the shared library, whose static TORCH_LIBRARY initialisers register the membrane op.
#include <Python.h>

static struct PyModuleDef membrane_ext_module = {PyModuleDef_HEAD_INIT, "_membrane_ext",
                                                 "spmctl fused membrane op (registered in torch.ops.spmctl)",
                                                 -1, nullptr};

PyMODINIT_FUNC PyInit__membrane_ext(void) { return PyModule_Create(&membrane_ext_module); }
