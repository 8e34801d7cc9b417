// Autograd for spmctl::membrane_fwd, registered for the Autograd dispatch key in C++.
//
// A Python-registered autograd formula costs ~100 us per call (a Python autograd.Function, its
// context and the Python backward), which at the membrane's sizes is more than the kernels
// themselves; this C++ Function calls the same two ops (membrane_fwd, membrane_bwd) below the
// autograd key. It works for every backend the ops are registered for (CPU, CUDA), and the fake
// kernels registered in Python (spmctl/ops/fused.py) keep it traceable by torch.compile.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

namespace spmctl {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

at::Tensor call_fwd(const at::Tensor& x, const at::Tensor& base, const at::Tensor& down, const at::Tensor& up,
                    const at::Tensor& gate, const at::Tensor& scale, bool conv) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("spmctl::membrane_fwd", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                               const at::Tensor&, const at::Tensor&, const at::Tensor&, bool)>();
  return op.call(x, base, down, up, gate, scale, conv);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> call_bwd(const at::Tensor& grad, const at::Tensor& x,
                                                        const at::Tensor& down, const at::Tensor& up,
                                                        const at::Tensor& gate, const at::Tensor& scale,
                                                        bool conv) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("spmctl::membrane_bwd", "")
          .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
              const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
              const at::Tensor&, bool)>();
  return op.call(grad, x, down, up, gate, scale, conv);
}

class MembraneFunction : public torch::autograd::Function<MembraneFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& base,
                            const at::Tensor& down, const at::Tensor& up, const at::Tensor& gate,
                            const at::Tensor& scale, bool conv) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({x, down, up, gate, scale});
    ctx->saved_data["conv"] = conv;
    return call_fwd(x, base, down, up, gate, scale, conv);
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    const auto saved = ctx->get_saved_variables();
    const bool conv = ctx->saved_data["conv"].toBool();
    const at::Tensor& grad = grads[0];
    auto [gx, gdown, gup] = call_bwd(grad, saved[0], saved[1], saved[2], saved[3], saved[4], conv);
    // d out / d base_out is the identity; the gate and scale are not trained
    return {gx, grad, gdown, gup, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor membrane_fwd_autograd(const at::Tensor& x, const at::Tensor& base, const at::Tensor& down,
                                 const at::Tensor& up, const at::Tensor& gate, const at::Tensor& scale, bool conv) {
  return MembraneFunction::apply(x, base, down, up, gate, scale, conv);
}

}  // namespace
}  // namespace spmctl

TORCH_LIBRARY_IMPL(spmctl, Autograd, m) {
  m.impl("membrane_fwd", &spmctl::membrane_fwd_autograd);
}
