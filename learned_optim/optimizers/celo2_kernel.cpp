// Celo2's learned network for one tensor of two or more axes, as a CPU kernel: the 18 per-coordinate
// features and the MLP run eight coordinates at a time in vector registers (GCC/Clang vector
// extensions: AVX2 where the compiler targets it, narrower SIMD elsewhere), in two passes over the
// tensor; nothing per coordinate is written but the step. The math is
// learned_optim/optimizers/celo2.py's learned_step (its docstring has it); celo2_kernel.py prepares
// the operands and holds the tests' contract.
//
// Operands are described by their strides over the parameter's shape (0 along a broadcast axis):
// the Adafactor factors and the first layer's row and column terms are broadcast along one
// factored axis, and the per-matrix statistics along the last two axes. Adjacent axes that every
// operand walks contiguously are merged; the kernel then loops over rows of the last merged axis,
// where each operand's stride must be 0 (constant along the row) or 1.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <cmath>
#if defined(__AVX__)
#include <immintrin.h>
#endif
#include <cstring>
#include <vector>

namespace {

constexpr int kLanes = 8;
constexpr int kFeatures = 18;  // per-coordinate features (celo2_pointwise.network_step's order)
constexpr int kHidden = 8;
constexpr int kDecays = 3;
constexpr int kOutputs = 2;  // the network's outputs the step reads
typedef float Vec __attribute__((vector_size(kLanes * sizeof(float))));

inline Vec splat(float x) { return Vec{} + x; }

// Eight lanes of an operand: consecutive values (Walks = true) or one value broadcast.
template <bool Walks>
inline Vec lanes(const float* data) {
  if constexpr (Walks) {
    Vec v;
    std::memcpy(&v, data, sizeof(Vec));
    return v;
  } else {
    return splat(*data);
  }
}

// 1/√x for x > 0 (every caller adds a positive ε). With AVX, the 12-bit estimate and one Newton
// step (relative error about 1e-7, float32 rounding): a division and a square root per lane
// would cost more than the network where every feature is normalised by its own magnitude.
inline Vec rsqrt(Vec x) {
#if defined(__AVX__)
  const Vec y = reinterpret_cast<Vec>(_mm256_rsqrt_ps(reinterpret_cast<__m256>(x)));
  return y * (1.5f - 0.5f * x * y * y);
#else
  Vec out;
  for (int i = 0; i < kLanes; ++i) out[i] = 1.0f / std::sqrt(x[i]);
  return out;
#endif
}

inline Vec relu(Vec x) { return x > 0.0f ? x : Vec{}; }

inline void activate(Vec* h, bool relu_activation) {
  if (relu_activation) {
    _Pragma("GCC unroll 8") for (int u = 0; u < 8; ++u) h[u] = relu(h[u]);
  } else {
    for (int u = 0; u < 8; ++u)
      for (int i = 0; i < 8; ++i) h[u][i] = std::tanh(h[u][i]);
  }
}

inline Vec clamp(Vec x, float low, float high) {
  x = x < low ? splat(low) : x;
  return x > high ? splat(high) : x;
}

// The merged iteration space: outer axes and the inner (last) axis, with each operand's strides.
struct Layout {
  std::vector<int64_t> sizes;  // merged axes
  std::vector<std::vector<int64_t>> strides;  // per operand, per merged axis
};

Layout merge_axes(const std::vector<int64_t>& full_shape, const std::vector<std::vector<int64_t>>& full_strides) {
  // Axes of size 1 take no part (whatever their strides); a tensor of one coordinate keeps one.
  std::vector<int64_t> shape;
  std::vector<std::vector<int64_t>> strides(full_strides.size());
  for (size_t axis = 0; axis < full_shape.size(); ++axis) {
    if (full_shape[axis] == 1 && !(axis + 1 == full_shape.size() && shape.empty())) continue;
    shape.push_back(full_shape[axis]);
    for (size_t o = 0; o < full_strides.size(); ++o) strides[o].push_back(full_strides[o][axis]);
  }
  Layout layout;
  layout.sizes.push_back(shape[0]);
  layout.strides.resize(strides.size());
  for (size_t o = 0; o < strides.size(); ++o) layout.strides[o].push_back(strides[o][0]);
  for (size_t axis = 1; axis < shape.size(); ++axis) {
    bool mergeable = true;
    for (size_t o = 0; o < strides.size(); ++o) {
      if (layout.strides[o].back() != strides[o][axis] * shape[axis]) mergeable = false;
    }
    if (mergeable) {
      layout.sizes.back() *= shape[axis];
      for (size_t o = 0; o < strides.size(); ++o) layout.strides[o].back() = strides[o][axis];
    } else {
      layout.sizes.push_back(shape[axis]);
      for (size_t o = 0; o < strides.size(); ++o) layout.strides[o].push_back(strides[o][axis]);
    }
  }
  for (size_t o = 0; o < strides.size(); ++o) {
    int64_t inner = layout.strides[o].back();
    TORCH_CHECK(inner == 0 || inner == 1, "celo2 kernel: an operand's innermost stride is ", inner, ", not 0 or 1");
  }
  return layout;
}

// Per-tensor operands of one step, in the order their strides are merged.
enum OperandIndex { kCoordinate, kRowFactor, kColFactor, kRowTerm, kColTerm, kMatrix, kOperands };

std::vector<int64_t> strides_after_channel(const torch::Tensor& t) {
  auto s = t.strides();
  return std::vector<int64_t>(s.begin() + 1, s.end());
}

// Where eight coordinates' inputs start; a broadcast operand's lanes walk along the row or stay.
struct Chunk {
  const float* grad;
  const float* param;
  const float* momentum[kDecays];
  const float* rms;
  const float* row_factor[kDecays];
  const float* col_factor[kDecays];
  const float* row_term[kHidden];
  const float* col_term[kHidden];
  const float* inverse[kFeatures];  // per matrix: 1/n_k (unused where matrices are single coordinates)
};

// A partial chunk's inputs, copied to full lanes (padded with the last coordinate's values).
struct PaddedChunk {
  alignas(32) float values[6 + 2 * kDecays + 2 * kHidden + kFeatures][kLanes];
  Chunk chunk;

  PaddedChunk(const Chunk& from, int count, bool rows_walk, bool cols_walk, bool matrices_walk) {
    int slot = 0;
    auto copy = [&](const float* source, bool walks) {
      for (int i = 0; i < kLanes; ++i) values[slot][i] = source[walks ? std::min(i, count - 1) : 0];
      return values[slot++];
    };
    chunk.grad = copy(from.grad, true);
    chunk.param = copy(from.param, true);
    chunk.rms = copy(from.rms, true);
    for (int k = 0; k < kDecays; ++k) {
      chunk.momentum[k] = copy(from.momentum[k], true);
      chunk.row_factor[k] = copy(from.row_factor[k], rows_walk);
      chunk.col_factor[k] = copy(from.col_factor[k], cols_walk);
    }
    for (int u = 0; u < kHidden; ++u) {
      chunk.row_term[u] = copy(from.row_term[u], rows_walk);
      chunk.col_term[u] = copy(from.col_term[u], cols_walk);
    }
    for (int k = 0; k < kFeatures; ++k) chunk.inverse[k] = from.inverse[k] ? copy(from.inverse[k], matrices_walk) : nullptr;
  }
};

// Calls visit(k, x_k) for the 18 features of a chunk, in the first layer's row order, built as
// they are used so that few are live at once.
template <bool RowsWalk, bool ColsWalk, typename Visit>
inline void for_each_feature(const Chunk& c, Visit&& visit) {
  const Vec g = lanes<true>(c.grad);
  visit(0, g);
  visit(1, clamp(g, -0.1f, 0.1f));
  visit(2, lanes<true>(c.param));
  const Vec r = lanes<true>(c.rms);
  const Vec rho = rsqrt(r + 1e-8f);
  visit(6, r);
  visit(10, rho);
  visit(14, g * rho);
  _Pragma("GCC unroll 8") for (int k = 0; k < kDecays; ++k) {
    const Vec m = lanes<true>(c.momentum[k]);
    const Vec f = lanes<RowsWalk>(c.row_factor[k]) * lanes<ColsWalk>(c.col_factor[k]);
    visit(3 + k, m);
    visit(7 + k, m * rho);
    visit(11 + k, g * f);
    visit(15 + k, m * f);
  }
}

// How a coordinate's features are normalised: by its matrix's n_k, constant along the row (the
// weights are scaled instead) or one matrix per lane; or by its own magnitude (1×1 matrices).
enum Normalisation { kPerRow = 0, kPerLane = 1, kOwnMagnitude = 2 };

struct Network {
  std::vector<Vec> first;  // (18, 8), pre-broadcast
  std::vector<Vec> dense;  // per layer: (in × out) weights then out biases; the last layer 8 × 2
  int hidden_layers = 0;
  bool relu_activation = true;
};

template <bool RowsWalk, bool ColsWalk, int Norm>
inline void network_chunk(const Chunk& c, const Network& net, const Vec* scaled_first, Vec& direction,
                          Vec& magnitude) {
  Vec h[kHidden];
  _Pragma("GCC unroll 8") for (int u = 0; u < kHidden; ++u) {
    h[u] = lanes<RowsWalk>(c.row_term[u]) + lanes<ColsWalk>(c.col_term[u]);
  }
  for_each_feature<RowsWalk, ColsWalk>(c, [&](int k, Vec x) {
    const Vec* w = scaled_first + k * kHidden;
    if constexpr (Norm == kPerLane) x = x * lanes<true>(c.inverse[k]);
    if constexpr (Norm == kOwnMagnitude) x = x * rsqrt(1e-9f + x * x);
    _Pragma("GCC unroll 8") for (int u = 0; u < kHidden; ++u) h[u] += w[u] * x;
  });
  activate(h, net.relu_activation);
  const Vec* layer = net.dense.data();
  for (int l = 0; l + 1 < net.hidden_layers; ++l) {
    Vec next[kHidden];
    _Pragma("GCC unroll 8") for (int o = 0; o < kHidden; ++o) next[o] = layer[kHidden * kHidden + o];
    _Pragma("GCC unroll 8") for (int i = 0; i < kHidden; ++i) {
      _Pragma("GCC unroll 8") for (int o = 0; o < kHidden; ++o) next[o] += layer[i * kHidden + o] * h[i];
    }
    _Pragma("GCC unroll 8") for (int o = 0; o < kHidden; ++o) h[o] = next[o];
    activate(h, net.relu_activation);
    layer += kHidden * kHidden + kHidden;
  }
  direction = layer[kHidden * kOutputs];
  magnitude = layer[kHidden * kOutputs + 1];
  _Pragma("GCC unroll 8") for (int i = 0; i < kHidden; ++i) {
    direction += layer[i * kOutputs] * h[i];
    magnitude += layer[i * kOutputs + 1] * h[i];
  }
}

struct Step {
  const float *grad, *param, *momentum, *rms;
  int64_t numel;
  const float *row_factor, *col_factor, *row_term, *col_term;
  int64_t row_factor_channel, col_factor_channel, row_term_channel, col_term_channel;
  Layout layout;

  Step(const torch::Tensor& g, const torch::Tensor& p, const torch::Tensor& m, const torch::Tensor& r,
       const torch::Tensor& rf, const torch::Tensor& cf, const torch::Tensor& rt, const torch::Tensor& ct,
       const std::vector<int64_t>& matrix) {
    for (const auto* t : {&g, &p, &m, &r}) {
      TORCH_CHECK(t->is_contiguous() && t->scalar_type() == torch::kFloat, "celo2 kernel: contiguous float32 inputs");
    }
    for (const auto* t : {&rf, &cf, &rt, &ct}) {
      TORCH_CHECK(t->scalar_type() == torch::kFloat && t->dim() == p.dim() + 1, "celo2 kernel: float32 operands");
    }
    TORCH_CHECK(m.size(0) == kDecays && rf.size(0) == kDecays && cf.size(0) == kDecays, "celo2 kernel: 3 decays");
    TORCH_CHECK(rt.size(0) == kHidden && ct.size(0) == kHidden, "celo2 kernel: 8 hidden units");
    grad = g.data_ptr<float>();
    param = p.data_ptr<float>();
    momentum = m.data_ptr<float>();
    rms = r.data_ptr<float>();
    numel = p.numel();
    row_factor = rf.data_ptr<float>();
    col_factor = cf.data_ptr<float>();
    row_term = rt.data_ptr<float>();
    col_term = ct.data_ptr<float>();
    row_factor_channel = rf.stride(0);
    col_factor_channel = cf.stride(0);
    row_term_channel = rt.stride(0);
    col_term_channel = ct.stride(0);
    std::vector<int64_t> shape(p.sizes().begin(), p.sizes().end());
    std::vector<std::vector<int64_t>> strides = {std::vector<int64_t>(p.strides().begin(), p.strides().end())};
    for (const auto* t : {&rf, &cf, &rt, &ct}) strides.push_back(strides_after_channel(*t));
    strides.push_back(matrix);
    layout = merge_axes(shape, strides);
    TORCH_CHECK(inner_stride(kRowFactor) == inner_stride(kRowTerm) && inner_stride(kColFactor) == inner_stride(kColTerm),
                "celo2 kernel: factors and first-layer terms broadcast alike");
  }

  int64_t inner() const { return layout.sizes.back(); }
  int64_t rows() const { return numel / inner(); }
  int64_t inner_stride(int o) const { return layout.strides[o].back(); }
  bool rows_walk() const { return inner_stride(kRowFactor) == 1; }
  bool cols_walk() const { return inner_stride(kColFactor) == 1; }
  bool matrices_walk() const { return inner_stride(kMatrix) == 1; }

  // Offsets of each operand at the start of outer row `row`.
  void offsets(int64_t row, int64_t* out) const {
    for (int o = 0; o < kOperands; ++o) out[o] = 0;
    for (int axis = static_cast<int>(layout.sizes.size()) - 2; axis >= 0; --axis) {
      int64_t index = row % layout.sizes[axis];
      row /= layout.sizes[axis];
      for (int o = 0; o < kOperands; ++o) out[o] += index * layout.strides[o][axis];
    }
  }

  // The chunk at column j of the row whose offsets are `base`; `inverse` (18 × matrices) or null.
  Chunk chunk(const int64_t* base, int64_t j, const float* inverse, int64_t matrices) const {
    Chunk c;
    const int64_t at = base[kCoordinate] + j;
    const int64_t rows_at = base[kRowFactor] + (rows_walk() ? j : 0);
    const int64_t cols_at = base[kColFactor] + (cols_walk() ? j : 0);
    const int64_t row_terms_at = base[kRowTerm] + (rows_walk() ? j : 0);
    const int64_t col_terms_at = base[kColTerm] + (cols_walk() ? j : 0);
    const int64_t matrix_at = base[kMatrix] + (matrices_walk() ? j : 0);
    c.grad = grad + at;
    c.param = param + at;
    c.rms = rms + at;
    for (int k = 0; k < kDecays; ++k) {
      c.momentum[k] = momentum + k * numel + at;
      c.row_factor[k] = row_factor + k * row_factor_channel + rows_at;
      c.col_factor[k] = col_factor + k * col_factor_channel + cols_at;
    }
    for (int u = 0; u < kHidden; ++u) {
      c.row_term[u] = row_term + u * row_term_channel + row_terms_at;
      c.col_term[u] = col_term + u * col_term_channel + col_terms_at;
    }
    for (int k = 0; k < kFeatures; ++k) c.inverse[k] = inverse ? inverse + k * matrices + matrix_at : nullptr;
    return c;
  }
};

int64_t grain(int64_t inner) { return std::max<int64_t>(1, 4096 / std::max<int64_t>(inner, 1)); }

// Runs body.template operator()<RowsWalk, ColsWalk>() with the step's strides as constants.
template <typename Body>
void dispatch_walks(const Step& step, Body&& body) {
  if (step.rows_walk()) {
    if (step.cols_walk()) body.template operator()<true, true>();
    else body.template operator()<true, false>();
  } else {
    if (step.cols_walk()) body.template operator()<false, true>();
    else body.template operator()<false, false>();
  }
}

}  // namespace

// Σ x_k² of each feature over each matrix (the last two axes): (18, matrices). With
// `rows_per_group` > 0, each run of that many consecutive rows holds matrices no other run holds
// (they walk along the rows), and threads split runs and add into one table; otherwise each
// thread sums into a table of its own and the tables are added.
torch::Tensor feature_square_sums(torch::Tensor grad, torch::Tensor param, torch::Tensor momentum, torch::Tensor rms,
                                  torch::Tensor row_factor, torch::Tensor col_factor, torch::Tensor row_term,
                                  torch::Tensor col_term, std::vector<int64_t> matrix_strides, int64_t matrices,
                                  int64_t rows_per_group) {
  const Step step(grad, param, momentum, rms, row_factor, col_factor, row_term, col_term, matrix_strides);
  const bool matrices_walk = step.matrices_walk();
  const bool shared = matrices_walk && rows_per_group > 0 && step.rows() % rows_per_group == 0;
  const int tables = shared ? 1 : at::get_num_threads();
  auto partial = torch::zeros({tables, kFeatures, matrices}, param.options());
  float* sums = partial.data_ptr<float>();
  const int64_t inner = step.inner();
  const int64_t group = shared ? rows_per_group : 1;
  dispatch_walks(step, [&]<bool RowsWalk, bool ColsWalk>() {
    at::parallel_for(0, step.rows() / group, std::max<int64_t>(1, grain(inner) / group), [&](int64_t first, int64_t last) {
      float* mine = sums + (shared ? 0 : static_cast<int64_t>(at::get_thread_num()) * kFeatures * matrices);
      int64_t base[kOperands];
      for (int64_t row = first * group; row < last * group; ++row) {
        step.offsets(row, base);
        Vec row_sums[kFeatures];
        for (int k = 0; k < kFeatures; ++k) row_sums[k] = Vec{};
        for (int64_t j = 0; j < inner; j += kLanes) {
          const int count = static_cast<int>(std::min<int64_t>(kLanes, inner - j));
          const Chunk full = step.chunk(base, j, nullptr, 0);
          Vec valid = Vec{};
          for (int i = 0; i < count; ++i) valid[i] = 1.0f;
          auto accumulate = [&](int k, Vec x) {
            const Vec square = x * x * valid;
            if (matrices_walk) {  // one matrix per coordinate of the row
              float* target = mine + k * matrices + base[kMatrix] + j;
              if (count == kLanes) {
                const Vec sum = lanes<true>(target) + square;
                std::memcpy(target, &sum, sizeof(Vec));
              } else {
                for (int i = 0; i < count; ++i) target[i] += square[i];
              }
            } else {
              row_sums[k] += square;
            }
          };
          if (count == kLanes) {
            for_each_feature<RowsWalk, ColsWalk>(full, accumulate);
          } else {
            const PaddedChunk padded(full, count, RowsWalk, ColsWalk, false);
            for_each_feature<true, true>(padded.chunk, accumulate);
          }
        }
        if (!matrices_walk) {
          for (int k = 0; k < kFeatures; ++k) {
            float total = 0.0f;
            for (int i = 0; i < kLanes; ++i) total += row_sums[k][i];
            mine[k * matrices + base[kMatrix]] += total;
          }
        }
      }
    });
  });
  return tables == 1 ? partial[0] : partial.sum(0);
}

// The network's raw step d · exp(exp_mult · s), shaped like the parameter, and where every
// momentum is still exactly zero (a coordinate that has never had a gradient). `inverse`:
// (18, matrices) 1/n_k per feature and matrix, or empty when every matrix is one coordinate (each
// feature then divided by its own magnitude). `layers`: the MLP's (weight (in, out), bias) in turn.
std::tuple<torch::Tensor, torch::Tensor> network_step(torch::Tensor grad, torch::Tensor param, torch::Tensor momentum,
                                                      torch::Tensor rms, torch::Tensor row_factor,
                                                      torch::Tensor col_factor, torch::Tensor row_term,
                                                      torch::Tensor col_term, std::vector<int64_t> matrix_strides,
                                                      torch::Tensor inverse, torch::Tensor first_weight,
                                                      std::vector<torch::Tensor> layers, bool relu_activation,
                                                      int64_t outputs, double exp_mult) {
  const Step step(grad, param, momentum, rms, row_factor, col_factor, row_term, col_term, matrix_strides);
  TORCH_CHECK(first_weight.size(0) == kFeatures && first_weight.size(1) == kHidden, "celo2 kernel: (18, 8) first layer");
  const bool own_magnitude = inverse.numel() == 0;
  auto inverse_c = inverse.contiguous();
  const float* inv = own_magnitude ? nullptr : inverse_c.data_ptr<float>();
  const int64_t matrices = own_magnitude ? 0 : inverse.size(1);
  const int norm = own_magnitude ? kOwnMagnitude : (step.matrices_walk() ? kPerLane : kPerRow);
  Network net;
  net.relu_activation = relu_activation;
  auto first = first_weight.contiguous();
  for (int i = 0; i < kFeatures * kHidden; ++i) net.first.push_back(splat(first.data_ptr<float>()[i]));
  net.hidden_layers = static_cast<int>(layers.size() / 2);
  TORCH_CHECK(net.hidden_layers >= 1, "celo2 kernel: at least one hidden layer");
  for (int l = 0; l < net.hidden_layers; ++l) {
    auto w = layers[2 * l].contiguous(), b = layers[2 * l + 1].contiguous();
    const bool last = l == net.hidden_layers - 1;
    const int out = last ? kOutputs : kHidden;
    TORCH_CHECK(w.size(0) == kHidden && (last ? w.size(1) >= kOutputs : w.size(1) == kHidden),
                "celo2 kernel: hidden layers of 8 units");
    for (int i = 0; i < kHidden; ++i)
      for (int o = 0; o < out; ++o) net.dense.push_back(splat(w.data_ptr<float>()[i * w.size(1) + o]));
    for (int o = 0; o < out; ++o) net.dense.push_back(splat(b.data_ptr<float>()[o]));
  }
  auto result = torch::empty_like(param);
  auto untouched = torch::empty(param.sizes(), param.options().dtype(torch::kBool));
  float* out = result.data_ptr<float>();
  bool* never = untouched.data_ptr<bool>();
  const int64_t inner = step.inner();
  const float multiplier = static_cast<float>(exp_mult);

  auto finish = [&](const int64_t* base, int64_t j, int count, Vec direction, Vec magnitude) {
    if (outputs == 2) {
      for (int i = 0; i < kLanes; ++i) direction[i] *= std::exp(magnitude[i] * multiplier);
    }
    const int64_t at = base[kCoordinate] + j;
    const float* m = step.momentum + at;
    for (int i = 0; i < count; ++i)
      never[at + i] = m[i] == 0.0f && m[step.numel + i] == 0.0f && m[2 * step.numel + i] == 0.0f;
    if (count == kLanes) {
      std::memcpy(out + at, &direction, sizeof(Vec));
    } else {
      for (int i = 0; i < count; ++i) out[at + i] = direction[i];
    }
  };

  auto run = [&]<bool RowsWalk, bool ColsWalk, int Norm>() {
    at::parallel_for(0, step.rows(), grain(inner), [&](int64_t begin, int64_t end) {
      int64_t base[kOperands];
      std::vector<Vec> scaled(kFeatures * kHidden);
      const Vec* weights = Norm == kPerRow ? scaled.data() : net.first.data();
      for (int64_t row = begin; row < end; ++row) {
        step.offsets(row, base);
        if constexpr (Norm == kPerRow) {  // one matrix along the row: scale the weights, not the features
          for (int k = 0; k < kFeatures; ++k) {
            const float inverse_k = inv[k * matrices + base[kMatrix]];
            for (int u = 0; u < kHidden; ++u) scaled[k * kHidden + u] = net.first[k * kHidden + u] * inverse_k;
          }
        }
        for (int64_t j = 0; j < inner; j += kLanes) {
          const int count = static_cast<int>(std::min<int64_t>(kLanes, inner - j));
          const Chunk full = step.chunk(base, j, inv, matrices);
          Vec direction, magnitude;
          if (count == kLanes) {
            network_chunk<RowsWalk, ColsWalk, Norm>(full, net, weights, direction, magnitude);
          } else {
            const PaddedChunk padded(full, count, RowsWalk, ColsWalk, Norm == kPerLane);
            network_chunk<true, true, Norm>(padded.chunk, net, weights, direction, magnitude);
          }
          finish(base, j, count, direction, magnitude);
        }
      }
    });
  };
  dispatch_walks(step, [&]<bool RowsWalk, bool ColsWalk>() {
    if (norm == kPerRow) run.template operator()<RowsWalk, ColsWalk, kPerRow>();
    else if (norm == kPerLane) run.template operator()<RowsWalk, ColsWalk, kPerLane>();
    else run.template operator()<RowsWalk, ColsWalk, kOwnMagnitude>();
  });
  return {result, untouched};
}

// The learned per-tensor step scale (celo2_step_scale.py has the math) for one contiguous float32
// tensor: the six sums of its statistics in one pass (eight lanes in float over blocks, blocks in
// double), the nine statistics and the 9→H→1 network. Called eagerly it is one call per tensor,
// where the torch ops it replaces cost a few hundred microseconds per tensor in Python overhead.
double step_scale(torch::Tensor param, torch::Tensor grad, torch::Tensor fast, torch::Tensor slow, double step,
                  bool adamw, torch::Tensor w0, torch::Tensor b0, torch::Tensor w1, torch::Tensor b1) {
  const int64_t n = grad.numel();
  for (const torch::Tensor* t : {&param, &grad, &fast, &slow, &w0, &b0, &w1, &b1}) {
    TORCH_CHECK(t->scalar_type() == torch::kFloat && t->is_contiguous(), "step_scale: contiguous float32 operands");
  }
  TORCH_CHECK(param.numel() == n && fast.numel() == n && slow.numel() == n, "step_scale: operands of one size");
  constexpr int kSums = 6;  // p·p, g·g, f·f, s·s, f·g, s·g
  constexpr int64_t kBlock = 4096;
  const float *p = param.data_ptr<float>(), *g = grad.data_ptr<float>();
  const float *f = fast.data_ptr<float>(), *sl = slow.data_ptr<float>();
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  std::vector<double> partial(blocks * kSums, 0.0);
  at::parallel_for(0, blocks, 16, [&](int64_t begin, int64_t end) {
    for (int64_t block = begin; block < end; ++block) {
      const int64_t start = block * kBlock, stop = std::min(n, start + kBlock);
      Vec acc[kSums] = {};
      int64_t i = start;
      for (; i + kLanes <= stop; i += kLanes) {
        const Vec pv = lanes<true>(p + i), gv = lanes<true>(g + i), fv = lanes<true>(f + i), sv = lanes<true>(sl + i);
        acc[0] += pv * pv;
        acc[1] += gv * gv;
        acc[2] += fv * fv;
        acc[3] += sv * sv;
        acc[4] += fv * gv;
        acc[5] += sv * gv;
      }
      double* out = partial.data() + block * kSums;
      for (int k = 0; k < kSums; ++k)
        for (int lane = 0; lane < kLanes; ++lane) out[k] += acc[k][lane];
      for (; i < stop; ++i) {
        out[0] += double(p[i]) * p[i];
        out[1] += double(g[i]) * g[i];
        out[2] += double(f[i]) * f[i];
        out[3] += double(sl[i]) * sl[i];
        out[4] += double(f[i]) * g[i];
        out[5] += double(sl[i]) * g[i];
      }
    }
  });
  double sums[kSums] = {};
  for (int64_t block = 0; block < blocks; ++block)
    for (int k = 0; k < kSums; ++k) sums[k] += partial[block * kSums + k];
  const double tiny = 1e-30, count = double(std::max<int64_t>(n, 1));
  const double log_g = 0.5 * std::log(sums[1] / count + tiny);
  const double features[9] = {
      0.5 * std::log(sums[0] / count + tiny),
      log_g,
      0.5 * std::log(sums[2] / count + tiny) - log_g,
      0.5 * std::log(sums[3] / count + tiny) - log_g,
      sums[4] / std::sqrt(sums[2] * sums[1] + tiny),
      sums[5] / std::sqrt(sums[3] * sums[1] + tiny),
      std::log(std::max(step, 1.0)),
      std::log(count),
      adamw ? 1.0 : 0.0,
  };
  const int64_t hidden = b0.numel();
  TORCH_CHECK(w0.numel() == 9 * hidden && w1.numel() == hidden && b1.numel() == 1, "step_scale: a 9→H→1 network");
  const float *first = w0.data_ptr<float>(), *first_bias = b0.data_ptr<float>(), *second = w1.data_ptr<float>();
  double output = b1.data_ptr<float>()[0];
  for (int64_t u = 0; u < hidden; ++u) {
    double unit = first_bias[u];
    for (int k = 0; k < 9; ++k) unit += features[k] * 0.125 * first[k * hidden + u];  // INPUT_SCALE = 1/8
    output += std::max(unit, 0.0) * second[u];
  }
  const double limit = std::log(100.0);
  return std::exp(limit * std::tanh(output / limit));
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("feature_square_sums", &feature_square_sums);
  m.def("network_step", &network_step);
  m.def("step_scale", &step_scale);
}
