// The diagonal-check results of recent weights, remembered per weight
// version (host side, no CUDA types: the CUDA launchers store device flags
// here, and the schema file's _clear_diagonal_cache op empties it).
#pragma once

#include <ATen/ATen.h>
#include <c10/util/intrusive_ptr.h>

#include <algorithm>
#include <cstdint>
#include <mutex>
#include <vector>

namespace fcn_repro {

// The diagonal-check flags of recent weights. An entry holds a weak reference
// to the weight's storage (so its address is not reused while the entry
// lives), the view (offset, sizes, strides, dtype, device) and the version
// counter value it was checked at: any in-place change through torch bumps
// the version and the weight is checked again. Entries are per stream too:
// the flag is written by a kernel on the stream that checked, so another
// stream checks for itself rather than read it unsynchronised. (A change that bypasses the
// version counter, e.g. through `.data` or a NumPy view, is not seen: call
// fcn_repro.ops.clear_diagonal_cache(), the op _clear_diagonal_cache.)
// Used by the CUDA launchers, where the check is a kernel launch per call;
// the CPU launchers check the weight on every call.
class DiagCache {
 public:
  // The cached flag of weight w, or an undefined tensor.
  at::Tensor find(const at::Tensor& w, int64_t stream) {
    if (!cacheable(w)) return at::Tensor();
    std::lock_guard<std::mutex> lock(mu_);
    for (Entry& e : entries_)
      if (e.stream == stream && matches(e, w)) return e.flag;
    return at::Tensor();
  }
  void insert(const at::Tensor& w, int64_t stream, const at::Tensor& flag) {
    if (!cacheable(w)) return;
    std::lock_guard<std::mutex> lock(mu_);
    entries_.erase(std::remove_if(entries_.begin(), entries_.end(),
                                  [](const Entry& e) { return e.storage.expired(); }),
                   entries_.end());
    if (entries_.size() >= kMaxEntries) entries_.erase(entries_.begin());
    entries_.push_back(Entry{c10::weak_intrusive_ptr<c10::StorageImpl>(
                                 w.storage().getWeakStorageImpl()),
                             w.storage_offset(), w.sizes().vec(), w.strides().vec(),
                             w.scalar_type(), w.device(), version(w), stream, flag});
  }
  void clear() {
    std::lock_guard<std::mutex> lock(mu_);
    entries_.clear();
  }

 private:
  static constexpr size_t kMaxEntries = 64;
  struct Entry {
    c10::weak_intrusive_ptr<c10::StorageImpl> storage;
    int64_t offset;
    std::vector<int64_t> sizes, strides;
    at::ScalarType dtype;
    at::Device device;
    uint32_t version;
    int64_t stream;
    at::Tensor flag;
  };
  static bool cacheable(const at::Tensor& w) {
    return !w.is_inference() && w.has_storage();  // inference tensors have no version counter
  }
  static uint32_t version(const at::Tensor& w) {
    return w.unsafeGetTensorImpl()->version_counter().current_version();
  }
  static bool matches(const Entry& e, const at::Tensor& w) {
    return !e.storage.expired() && e.storage._unsafe_get_target() == w.storage().unsafeGetStorageImpl() &&
           e.offset == w.storage_offset() && e.sizes == w.sizes() && e.strides == w.strides() &&
           e.dtype == w.scalar_type() && e.device == w.device() && e.version == version(w);
  }
  std::mutex mu_;
  std::vector<Entry> entries_;
};

inline DiagCache& diag_cache() {
  static DiagCache* cache = new DiagCache();  // never destroyed: outlives the tensors it holds
  return *cache;
}

}  // namespace fcn_repro
