// Named rows of the small float32 tables a fused pass exchanges, (N, rows, HW)
// or (N, rows, C) (fgdkern/rows.py). A pass's rows header lists each table
// once as X(enumerator, name) entries; from that one list it gets the enum its
// kernels index the rows with and the names a test compares, through an op
// such as fgdkern::fgd_rows_cpp, with fgdkern/rows.py.
#pragma once

#include <string>
#include <utility>
#include <vector>

// X-macro arguments: LIST(FGDKERN_ROW_ENUMERATOR) gives "id, id, ...",
// LIST(FGDKERN_ROW_NAME) gives "\"name\", ...".
#define FGDKERN_ROW_ENUMERATOR(id, name) id,
#define FGDKERN_ROW_NAME(id, name) #name,

// struct Table { enum : int { ids..., kRows }; }: the rows of LIST in order,
// named Table::id, with their count Table::kRows (the enumerators of tables
// that share row names stay apart).
#define FGDKERN_ROW_TABLE(Table, LIST) \
  struct Table {                       \
    enum : int { LIST(FGDKERN_ROW_ENUMERATOR) kRows };   \
  }

// {"TABLE", {"row", ...}}: a table as fgdkern/rows.py names it, and its rows.
#define FGDKERN_ROW_NAMES(table, LIST) \
  ::fgdkern::cpu::RowNames { table, { LIST(FGDKERN_ROW_NAME) } }

namespace fgdkern::cpu {

using RowNames = std::pair<const char*, std::vector<const char*>>;

// "table.row" for every row of the tables, tables in order, rows in order.
inline std::vector<std::string> row_names(const std::vector<RowNames>& tables) {
  std::vector<std::string> out;
  for (const auto& [table, rows] : tables) {
    for (const char* row : rows) out.push_back(std::string(table) + "." + row);
  }
  return out;
}

}  // namespace fgdkern::cpu
